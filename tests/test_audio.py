"""The Wav2Lip mel recipe and the loudness features, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from dropbox_daemon.render.media import audio as A


def test_slaney_mel_scale_fixed_points() -> None:
    assert A.hz_to_mel(1000.0) == pytest.approx(15.0)
    assert A.hz_to_mel(55.0) == pytest.approx(0.825)
    assert A.hz_to_mel(500.0) == pytest.approx(7.5)
    assert A.mel_to_hz(15.0) == pytest.approx(1000.0)
    # above 1 kHz the scale is logarithmic: 27 mels per factor 6.4
    assert A.hz_to_mel(6400.0) == pytest.approx(42.0)
    f = np.array([55.0, 300.0, 999.0, 1000.0, 4321.0, 7600.0])
    assert np.allclose(A.mel_to_hz(A.hz_to_mel(f)), f)


def test_mel_filters_shape_and_peaks() -> None:
    fb = A.mel_filters()
    assert fb.shape == (80, 401) and fb.min() >= 0
    edges = A.mel_to_hz(np.linspace(A.hz_to_mel(55.0), A.hz_to_mel(7600.0), 82))
    freqs = np.linspace(0, 8000, 401)
    # each triangle is zero outside its two neighbours' centres
    for k in (0, 40, 79):
        outside = (freqs <= edges[k]) | (freqs >= edges[k + 2])
        assert np.all(fb[k, outside] == 0)
    # Slaney normalisation: peak height 2 / (upper - lower edge)
    k = 60
    peak_bin = int(np.argmin(np.abs(freqs - edges[k + 1])))
    lower = (freqs[peak_bin] - edges[k]) / (edges[k + 1] - edges[k])
    upper = (edges[k + 2] - freqs[peak_bin]) / (edges[k + 2] - edges[k + 1])
    assert fb[k, peak_bin] == pytest.approx(
        min(lower, upper) * 2 / (edges[k + 2] - edges[k]), rel=1e-5
    )


def test_normalisation_maps_db_range_onto_plus_minus_four() -> None:
    got = A.normalize_db(np.array([-150.0, -100.0, -75.0, -50.0, -25.0, 0.0, 20.0]))
    assert got.tolist() == [-4.0, -4.0, -2.0, 0.0, 2.0, 4.0, 4.0]


def test_silence_is_minus_four_everywhere() -> None:
    mel = A.melspectrogram(np.zeros(16000, np.float32))
    assert mel.shape == (80, 81)  # 1 + 16000 // 200 steps
    assert np.all(mel == -4.0)


def test_sine_on_a_bin_gives_the_hand_computed_band_value() -> None:
    # A sine exactly on FFT bin m under a periodic Hann window has |X| = A*N/4 at m
    # and A*N/8 at m +- 1, zero elsewhere; preemphasis scales it by |1 - 0.97 e^-jw|.
    amp, m = 0.5, 50  # bin 50 = 1000 Hz
    f = m * A.SAMPLE_RATE / A.N_FFT
    t = np.arange(A.SAMPLE_RATE) / A.SAMPLE_RATE
    x = (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)
    mel = A.melspectrogram(x)
    w = 2 * np.pi * f / A.SAMPLE_RATE
    gain = abs(1 - 0.97 * np.exp(-1j * w))
    mag = np.zeros(401)
    mag[m] = amp * A.N_FFT / 4 * gain
    mag[m - 1] = mag[m + 1] = amp * A.N_FFT / 8 * gain
    expected = A.normalize_db(20 * np.log10(np.maximum(1e-5, A.mel_filters() @ mag)) - 20)
    mid = mel[:, 40]  # far from the padded edges
    assert np.abs(mid - expected).max() < 1e-3
    assert int(np.argmax(mid)) == int(np.argmax(expected))
    assert mid.max() > 2.5 and mid.min() == -4.0


@pytest.mark.parametrize("seconds", [0.01, 4.99, 5.0, 12.3])
def test_the_stft_in_chunks_is_the_stft_in_one_call(monkeypatch, seconds) -> None:  # noqa: ANN001
    """Chunked so that a long track's transform does not hold it all in complex128 at once:
    every frame is transformed on its own, so the result is the same to the bit."""
    rng = np.random.default_rng(7)
    y = (rng.standard_normal(int(16000 * seconds)) * 0.3).astype(np.float32)
    chunked = A.stft_magnitude(y)
    monkeypatch.setattr(A, "STFT_CHUNK", 1 << 30)
    whole = A.stft_magnitude(y)
    assert chunked.shape == whole.shape == (401, 1 + max(len(y), 401) // 200)
    assert chunked.dtype == np.float32 and np.array_equal(chunked, whole)


def test_mel_windows_per_video_frame() -> None:
    assert [A.mel_window_start(i, 25) for i in range(7)] == [0, 3, 6, 9, 12, 16, 19]
    assert [A.mel_window_start(i, 30) for i in range(5)] == [0, 2, 5, 8, 10]
    mel = np.arange(80 * 50, dtype=np.float32).reshape(80, 50)
    assert A.mel_window(mel, 2, 25).shape == (80, 16)
    assert np.array_equal(A.mel_window(mel, 2, 25), mel[:, 6:22])
    assert np.array_equal(A.mel_window(mel, 20, 25), mel[:, 34:50])  # past the end: the last window
    short = A.mel_window(mel[:, :5], 0, 25)
    assert short.shape == (80, 16) and np.all(short[:, 5:] == -4.0)


def test_rms_envelope_and_mouth_opening() -> None:
    sr = A.SAMPLE_RATE
    x = np.zeros(2 * sr, np.float32)
    x[sr // 2 : sr] = 0.5  # loud from 0.5 s to 1 s
    rms = A.rms_envelope(x, 25, 50, lead=0.0)
    assert rms[5] == 0.0 and rms[18] == pytest.approx(0.5) and rms[40] == 0.0
    opening = A.mouth_opening(rms)
    assert opening[:10].max() == 0.0
    assert opening[15] > 0.9  # fast attack
    assert 0 < opening[27] < opening[25]  # slower release
    assert A.mouth_opening(np.zeros(10, np.float32)).tolist() == [0.0] * 10


def test_load_resamples_to_16k_mono(tmp_path) -> None:  # noqa: ANN001
    from support import make_tone

    p = make_tone(tmp_path / "a.mp3", 1.5, rate=44100)
    y = A.load_mono16k(p)
    assert y.dtype == np.float32 and abs(len(y) - 24000) < 1200  # mp3 padding
    assert 0.1 < np.abs(y).max() <= 1.0
