"""The wav2lip engine's model: published checkpoint format, strict loading, and parity of the
fast model (BatchNorm folded, channels_last; bf16 held to 35 dB PSNR) with the unfused reference."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from support import astronaut
from w2l_fixture import calibrated_net, real_inputs, save_published, to_torch

from dropbox_daemon.errors import EngineError
from dropbox_daemon.render.engines.base import AudioFeatures, FaceFrame, RenderContext
from dropbox_daemon.render.engines.precision import (
    choose_dtype,
    cpu_flags,
    cpu_has_amx,
    describe_precision,
)
from dropbox_daemon.render.engines.wav2lip import (
    EXACT_FROM,
    FACE,
    FastWav2Lip,
    Wav2LipEngine,
    lower_face_mask,
)
from dropbox_daemon.render.engines.wav2lip_net import load_reference, read_state_dict
from dropbox_daemon.render.media import audio as A


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):  # noqa: ANN001, ANN201
    net = calibrated_net()
    return net, save_published(net, tmp_path_factory.mktemp("w2l") / "wav2lip_random.pth")


def test_the_test_model_is_not_vacuous(checkpoint) -> None:  # noqa: ANN001
    net, _ = checkpoint
    mel, faces = real_inputs(8, seed=5)
    with torch.inference_mode():
        out = net(*to_torch(mel, faces)).numpy()
        quiet = net(*to_torch(np.full_like(mel, -4.0), faces)).numpy()
    assert np.percentile(out, 99) - np.percentile(out, 1) > 0.8  # spans most of [0, 1]
    assert np.abs(out - quiet)[:, :, 48:].mean() > 0.05  # the mouth half depends on the audio


def test_published_format_loads_with_and_without_module_prefix(checkpoint, tmp_path) -> None:  # noqa: ANN001
    net, path = checkpoint
    sd = read_state_dict(path)
    assert set(sd) == set(net.state_dict()) and not any(k.startswith("module.") for k in sd)
    plain = tmp_path / "plain.pth"
    torch.save(net.state_dict(), plain)
    ref = load_reference(plain)
    assert all(
        torch.equal(a, b)
        for a, b in zip(ref.state_dict().values(), net.state_dict().values(), strict=True)
    )
    assert not any(t.is_meta for t in ref.state_dict().values())  # every weight was put in
    half = tmp_path / "half.pth"  # saved in half precision: loaded as the fp32 it computes in
    torch.save(
        {"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}}, half
    )
    ref16 = load_reference(half)
    assert all(p.dtype == torch.float32 for p in ref16.parameters())
    with torch.inference_mode():
        mel, faces = to_torch(*real_inputs(2, seed=3))
        assert (ref16(mel, faces) - ref(mel, faces)).abs().max() < 0.05


def test_auto_precision_follows_the_cpu_flags(checkpoint) -> None:  # noqa: ANN001
    want = torch.bfloat16 if cpu_has_amx() else torch.float32
    assert FastWav2Lip(checkpoint[1]).dtype == want
    assert FastWav2Lip(checkpoint[1], precision="fp32").dtype == torch.float32
    line = describe_precision("auto", "cpu", want)
    assert line.startswith(
        f"wav2lip runs {'bf16' if want == torch.bfloat16 else 'fp32'} on cpu (CPU flags"
    )


@pytest.mark.parametrize(
    ("cpu_bf16", "cpu_amx"),
    [(False, False), (True, False), (True, True)],
    ids=["avx2-cpu", "avx512-bf16-cpu", "amx-cpu"],
)
def test_the_precision_matrix_for_every_cpu_class(cpu_bf16: bool, cpu_amx: bool) -> None:
    """Every row of the choice, for each CPU class, whichever this one is: auto runs bf16 on
    AMX only (AVX512-BF16 alone runs this model faster in fp32)."""
    for device, precision, want in [
        ("cuda", "auto", torch.float16),
        ("cuda", "fp16", torch.float16),
        ("cuda", "bf16", torch.bfloat16),
        ("cuda", "fp32", torch.float32),
        ("cpu", "auto", torch.bfloat16 if cpu_amx else torch.float32),
        ("cpu", "bf16", torch.bfloat16),  # forced: runs (slowly, with a warning) anywhere
        ("cpu", "fp16", torch.float32),  # fp16 is CUDA's; the CPU says so and runs fp32
        ("cpu", "fp32", torch.float32),
    ]:
        got = choose_dtype(precision, device, cpu_bf16=cpu_bf16, cpu_amx=cpu_amx)
        assert got == want, (device, precision)


def test_a_cap_on_onednn_below_bf16_chooses_fp32_and_says_why(checkpoint) -> None:  # noqa: ANN001
    """ONEDNN_MAX_CPU_ISA=AVX2 is how an AVX2-only host is emulated here (make test-avx2) and
    how an operator keeps oneDNN off AVX-512: auto then runs fp32, and the log line says why."""
    code = (
        "import sys, torch\n"
        "from dropbox_daemon.render.engines.precision import describe_precision\n"
        "from dropbox_daemon.render.engines.wav2lip import FastWav2Lip\n"
        "m = FastWav2Lip(sys.argv[1])\n"
        "print(describe_precision('auto', 'cpu', m.dtype))\n"
        "print(m.net.output_block[1].weight.dtype)\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint[1])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("wav2lip runs fp32 on cpu (CPU flags"), out
    assert out[1] == "torch.float32", out
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        assert "oneDNN is capped below them (ONEDNN_MAX_CPU_ISA=AVX2)" in out[0], out


def test_fast_model_matches_the_reference_in_fp32(checkpoint) -> None:  # noqa: ANN001
    net, path = checkpoint
    fast = FastWav2Lip(path, precision="fp32")
    for seed in (7, 8):
        mel, faces = real_inputs(6, seed=seed)
        with torch.inference_mode():
            ref = net(*to_torch(mel, faces)).permute(0, 2, 3, 1).numpy()
        got = fast(mel, faces)
        assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lower_face_only_is_the_whole_network_where_it_is_pasted(checkpoint, precision) -> None:  # noqa: ANN001
    """The lower-face network runs on every CPU, in both precisions (bf16 where it is slow too).
    faces is (B, 96, 96, 6) by rows, columns, channels; channels 3-5 are the unmasked face."""
    _, path = checkpoint
    whole = FastWav2Lip(path, precision=precision)
    lower = FastWav2Lip(path, precision=precision, lower_only=True)
    mel, faces = real_inputs(6, seed=4)
    # the engine feeds the same frame twice (masked, whole); here the masked copy is another
    # frame, so that the rows copied can only come from channels 3-5
    faces[..., :3] = faces[::-1, ..., :3]
    a, b = whole(mel, faces), lower(mel, faces)
    assert b.shape == a.shape == (6, FACE, FACE, 3) and b.dtype == np.float32
    # the rows generated: fp32 bit for bit up to summation order; bf16 within its rounding
    tolerance = 1e-6 if precision == "fp32" else 2e-2
    assert np.abs(a[:, EXACT_FROM:] - b[:, EXACT_FROM:]).max() < tolerance
    assert np.array_equal(b[:, :EXACT_FROM], faces[:, :EXACT_FROM, :, 3:])  # the template's own
    assert not np.array_equal(b[:, :EXACT_FROM], faces[:, :EXACT_FROM, :, :3])  # nor 0-2
    # and the paste-back never reads above EXACT_FROM: the mask's first row > 0, mapped back
    # into the 96-row face, less the cubic resize's reach of 2 rows, at every box size
    for h in (40, 96, 97, 150, 333, 720):
        mask = lower_face_mask(h, h)
        first = int(np.argmax(mask.max(axis=1) > 0))
        assert (first + 0.5) * FACE / h - 0.5 - 2 >= EXACT_FROM, (h, first)


def test_bf16_stays_within_35_db_of_fp32(checkpoint) -> None:  # noqa: ANN001
    _, path = checkpoint
    ref_model = FastWav2Lip(path, precision="fp32")
    bf = FastWav2Lip(path, precision="bf16")
    # the bulk of the network really runs in bf16 (the decoder holds most of the FLOPs)
    assert bf.net.face_decoder_blocks[-1][0].conv_block[0].weight.dtype == torch.bfloat16
    assert bf.net.output_block[1].weight.dtype == torch.bfloat16
    for seed in (9, 10):
        mel, faces = real_inputs(8, seed=seed)
        ref, got = ref_model(mel, faces), bf(mel, faces)
        assert np.abs(got - ref).max() > 1e-3  # not secretly fp32
        mse = float(np.mean((got * 255 - ref * 255) ** 2))
        psnr = 10 * np.log10(255**2 / mse)
        assert psnr >= 35.0, psnr


def test_wrong_or_damaged_checkpoints_are_named(checkpoint, tmp_path) -> None:  # noqa: ANN001
    net, _ = checkpoint
    sd = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("output_block")}
    sd["module.extra.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": sd}, wrong)
    with pytest.raises(EngineError) as e:
        load_reference(wrong)
    assert e.value.code == "weights_mismatch"
    assert (
        "missing (e.g. output_block.0.conv_block.0.bias" in e.value.message
        and "extra.weight" in e.value.message
    )
    shape = tmp_path / "shape.pth"
    bad = dict(net.state_dict())
    bad["output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    torch.save({"state_dict": bad}, shape)
    with pytest.raises(EngineError, match="does not fit"):
        load_reference(shape)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(EngineError) as e:
        load_reference(damaged)
    assert e.value.code == "weights_invalid"
    with pytest.raises(EngineError) as e:
        load_reference(tmp_path / "absent.pth")
    assert e.value.code == "weights_missing"


def _frames(n: int) -> list[FaceFrame]:
    """Astronaut frames, every third one without a face (as a track with gaps gives them)."""
    img = np.ascontiguousarray(astronaut()[:, :, ::-1])
    return [FaceFrame(i, img, None if i % 3 == 2 else (160, 60, 290, 190)) for i in range(n)]


def test_batches_in_flight_give_the_same_patches_in_order(checkpoint) -> None:  # noqa: ANN001
    """The plain schedule, the overlapped one (CUDA's) and two model calls at once on the CPU
    (each in a thread of its own) agree patch for patch, gaps included."""
    _, path = checkpoint
    t = np.arange(2 * A.SAMPLE_RATE) / A.SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.25)).astype(np.float32)
    audio = AudioFeatures(samples, 25.0, 23)
    ctx = RenderContext("j", Path("a.wav"), 0.92, 25.0, 23, (512, 512), Path("."))
    engine = Wav2LipEngine(path, precision="fp32", batch=4, cpu_streams=1)
    engine.load()
    assert engine.streams is None and engine.in_flight == 0
    plain = list(engine.render(iter(_frames(23)), audio, ctx))
    engine.in_flight = 2
    overlapped = list(engine.render(iter(_frames(23)), audio, ctx))
    side = Wav2LipEngine(path, precision="fp32", batch=4, cpu_streams=2)
    side.load()
    assert side.streams is not None and side.in_flight == 2
    threads: list[str] = []
    model = side.model

    def called(mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return model(mel, faces)

    side.model = called  # type: ignore[assignment]
    both = list(side.render(iter(_frames(23)), audio, ctx))
    assert len(threads) == 4 and all(n.startswith("wav2lip-model") for n in threads), threads
    # oneDNN's results depend on the threads a call has (1 each now): the plain schedule again
    engine.in_flight = 0
    plain1 = list(engine.render(iter(_frames(23)), audio, ctx))
    for ref, other in ((plain, overlapped), (plain1, both)):
        assert len(ref) == len(other) == 23
        for i, (a, b) in enumerate(zip(ref, other, strict=True)):
            assert (a is None) == (b is None) == (i % 3 == 2)
            if a is not None:
                assert a.box == b.box and np.array_equal(a.pixels, b.pixels)
    # the patches differ with the audio (the model's output is used, not a constant)
    shown = [p.pixels for p in plain if p is not None]
    assert max(np.abs(s.astype(int) - shown[0]).mean() for s in shown) > 1.0


REQUIRE_CUDA = "DROPBOX_TEST_REQUIRE_CUDA"  # =1 on a GPU host: a missing GPU fails, not skips


@pytest.fixture
def cuda_gpu() -> None:
    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA) == "1":
        pytest.fail(f"no CUDA GPU, and {REQUIRE_CUDA}=1 (torch {torch.__version__})")
    pytest.skip("no CUDA GPU on this machine")


cuda = pytest.mark.usefixtures("cuda_gpu")


@cuda
def test_cuda_engine_loads_renders_and_splits_out_of_memory(checkpoint, monkeypatch) -> None:  # noqa: ANN001
    """The engine as the worker runs it on a GPU: load (fp16, batch fitted), the lower-face
    path with a batch in flight, and a batch split when CUDA runs out of memory; the patches
    match the CPU engine's within fp16's rounding."""
    _, path = checkpoint
    t = np.arange(2 * A.SAMPLE_RATE) / A.SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.25)).astype(np.float32)
    audio = AudioFeatures(samples, 25.0, 23)
    ctx = RenderContext("j", Path("a.wav"), 0.92, 25.0, 23, (512, 512), Path("."))
    gpu = Wav2LipEngine(path, cuda_batch=8)
    gpu.load()
    assert gpu.device == "cuda/fp16" and gpu.in_flight == 1 and 1 <= gpu.batch <= 8
    real = gpu.model.submit
    fails = {"left": 1}

    def tight(mel, faces):  # noqa: ANN001, ANN202
        if len(mel) > 2 and fails["left"]:
            fails["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(mel, faces)

    monkeypatch.setattr(gpu.model, "submit", tight)
    on_gpu = list(gpu.render(iter(_frames(23)), audio, ctx))
    cpu = Wav2LipEngine(path, precision="fp32", batch=4)
    cpu.load()
    on_cpu = list(cpu.render(iter(_frames(23)), audio, ctx))
    for a, b in zip(on_gpu, on_cpu, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.abs(a.pixels.astype(int) - b.pixels).mean() < 2.0


@cuda
def test_cuda_half_matches_the_reference(checkpoint) -> None:  # noqa: ANN001
    net, path = checkpoint
    fast = FastWav2Lip(path, device="cuda", precision="fp16")
    assert fast.dtype == torch.float16
    for seed in (7, 8):
        mel, faces = real_inputs(6, seed=seed)
        with torch.inference_mode():
            ref = net(*to_torch(mel, faces)).permute(0, 2, 3, 1).numpy()
        assert np.abs(fast(mel, faces) - ref).max() <= 2e-2


@cuda
def test_cuda_batch_fits_free_memory_and_async_equals_sync(checkpoint) -> None:  # noqa: ANN001
    _, path = checkpoint
    fast = FastWav2Lip(path, device="cuda", precision="fp16")
    assert 1 <= fast.fit_batch(4096) <= 4096
    mel, faces = real_inputs(8, seed=3)
    first, second = fast.submit(mel, faces), fast.submit(mel[::-1].copy(), faces[::-1].copy())
    assert np.array_equal(second.result()[::-1], first.result())


class _TightGpu:
    """A model whose device holds `room` frames a batch; beyond that it fails as CUDA does."""

    def __init__(self, room: int, error: BaseException) -> None:
        self.room, self.error, self.calls = room, error, []

    def submit(self, mel, faces):  # noqa: ANN001, ANN201
        import sys

        from dropbox_daemon.render.engines.wav2lip import Pending

        # a retry inside the `except` would still hold the failed call's frames
        self.calls.append((len(mel), sys.exc_info()[0] is None))
        if len(mel) > self.room:
            raise self.error
        return Pending(np.repeat(mel[:, :1, :1, None], 3, axis=3).astype(np.float32))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("CUDA error: out of memory (pinned host allocation)"),
    ],
)
def test_out_of_memory_halves_outside_the_except_and_grows_back(error) -> None:  # noqa: ANN001
    from dropbox_daemon.render.engines import wav2lip as W

    engine = W.Wav2LipEngine(None, batch=64)
    gpu = _TightGpu(16, error)
    engine.model = gpu  # type: ignore[assignment]
    mel = np.arange(64, dtype=np.float32)[:, None, None].repeat(80, 1).repeat(16, 2)
    faces = np.zeros((64, 96, 96, 6), np.float32)
    out = engine._submit(mel, faces).result()
    assert out[:, 0, 0, 0].tolist() == list(range(64))  # every frame, in order
    assert engine.batch == 16 and all(clean for _, clean in gpu.calls), gpu.calls
    gpu.room = 64  # memory is back: the batch doubles after GROW_AFTER batches that fit
    for _ in range(W.GROW_AFTER):
        engine._submit(mel[:16], faces[:16])
    assert engine.batch == 32
    for _ in range(W.GROW_AFTER):
        engine._submit(mel[:16], faces[:16])
    assert engine.batch == 64  # never past the batch the load fitted
    for _ in range(W.GROW_AFTER):
        engine._submit(mel[:16], faces[:16])
    assert engine.batch == 64


def test_other_gpu_errors_are_not_taken_for_out_of_memory() -> None:
    from dropbox_daemon.render.engines import wav2lip as W

    engine = W.Wav2LipEngine(None, batch=8)
    engine.model = _TightGpu(1, RuntimeError("CUDA error: an illegal memory access"))  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="illegal memory access"):
        engine._submit(np.zeros((8, 80, 16), np.float32), np.zeros((8, 96, 96, 6), np.float32))


def test_fp32_is_not_tf32(checkpoint) -> None:  # noqa: ANN001
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    FastWav2Lip(checkpoint[1], precision="fp32")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_the_batch_is_cut_to_the_host_memory_of_the_frames_it_holds() -> None:
    engine = Wav2LipEngine(None, batch=128, host_bytes=1 << 30)
    engine.in_flight = 1  # CUDA's schedule: one batch on the GPU while the next is cropped
    hd, uhd = 1920 * 1080 * 3, 3840 * 2160 * 3
    assert engine.host_batch(hd) == (1 << 30) // (2 * hd) == 86
    assert engine.host_batch(uhd) == 21
    assert engine.host_batch(640 * 360 * 3) == 128  # small frames: the GPU's batch
    assert Wav2LipEngine(None, batch=8, host_bytes=1 << 24).host_batch(uhd) == 1


@cuda
def test_waiting_for_the_gpu_does_not_spin_a_core(checkpoint) -> None:  # noqa: ANN001
    """result() sleeps on a blocking CUDA event: the CPU time spent waiting for a long batch
    is a small part of the wall time (a spinning wait would be all of it)."""
    import time

    _, path = checkpoint
    fast = FastWav2Lip(path, device="cuda", precision="fp16")
    mel, faces = real_inputs(256, seed=3)
    fast(mel, faces)  # warm
    pending = [fast.submit(mel, faces) for _ in range(8)]
    wall, cpu = time.perf_counter(), time.process_time()
    for p in pending:
        p.result()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall > 0.05 and cpu < 0.5 * wall, (wall, cpu)
