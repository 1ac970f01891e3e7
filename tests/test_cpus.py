"""One daemon per GPU takes its share of the host's cores, not all of them."""

from __future__ import annotations

from pathlib import Path

from dropbox_daemon import cpus


def test_gpus_on_host_counts_the_drivers_folders(tmp_path: Path) -> None:
    assert cpus.gpus_on_host(tmp_path / "absent") == 0
    for bus in ("0000:17:00.0", "0000:65:00.0", "0000:ca:00.0", "0000:e3:00.0"):
        (tmp_path / bus).mkdir()
    assert cpus.gpus_on_host(tmp_path) == 4
    # a container given one GPU sees only its folder: compose.yaml says how many the host has
    assert cpus.gpus_on_host(tmp_path / "absent", told="8") == 8
    assert cpus.gpus_on_host(tmp_path, told="eight") == 4  # not a number: the driver's count


def test_a_daemon_per_gpu_takes_its_share() -> None:
    assert cpus.cpu_share(64, 8, "3") == 8  # dropbox-daemon@3 on an 8-GPU host
    assert cpus.cpu_share(64, 8, "GPU-5f1c") == 8  # by UUID
    assert cpus.cpu_share(64, 8, "0,1") == 64  # one daemon for several GPUs: all cores
    assert cpus.cpu_share(64, 8, None) == 64  # no CUDA_VISIBLE_DEVICES: it sees every GPU
    assert cpus.cpu_share(64, 1, "0") == 64
    assert cpus.cpu_share(2, 0, None) == 2  # this CI host
    assert cpus.cpu_share(4, 8, "7") == 1  # never none


def test_the_encoder_gets_the_share_unless_configured() -> None:
    assert cpus.encode_threads(0, 8, 64) == 8
    assert cpus.encode_threads(0, 64, 64) == 0  # ffmpeg decides for the whole host
    assert cpus.encode_threads(3, 8, 64) == 3
    # beside a model on the CPU: a quarter of the share, at least one; the configured wins
    assert cpus.encode_threads(0, 2, 2, beside_model=True) == 1
    assert cpus.encode_threads(0, 16, 16, beside_model=True) == 4
    assert cpus.encode_threads(6, 16, 16, beside_model=True) == 6


def test_model_calls_at_once_on_the_cpu() -> None:
    """Two from 2 cores up (each on half), one on a single core; the configured number wins,
    at most one call per core."""
    assert cpus.model_streams(0, 1) == 1
    assert cpus.model_streams(0, 2) == 2
    assert cpus.model_streams(0, 16) == 2
    assert cpus.model_streams(4, 16) == 4
    assert cpus.model_streams(4, 2) == 2
    assert cpus.model_streams(1, 16) == 1
