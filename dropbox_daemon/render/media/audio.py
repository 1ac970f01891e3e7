"""Audio features: 16 kHz mono samples, the Wav2Lip log-mel spectrogram, loudness envelopes.

The mel recipe is Wav2Lip's (hparams.py / audio.py of the published model),
written here in numpy: preemphasis 0.97, |STFT| with n_fft 800, hop 200,
win 800 (Hann, centred, reflect padding), an 80-band Slaney mel filter bank
from 55 to 7600 Hz, 20*log10 minus ref_level_db 20, then the symmetric
normalisation of [min_level_db -100, 0] dB onto [-4, 4].
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from dropbox_daemon.errors import MediaError

SAMPLE_RATE = 16_000  # Hz, what every feature is computed at
N_FFT = 800  # samples (50 ms)
HOP = 200  # samples (12.5 ms): 80 mel steps per second
WIN = 800  # samples
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0  # Hz
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS = 4.0  # symmetric normalisation to [-4, 4]
MEL_STEPS_PER_SECOND = SAMPLE_RATE / HOP  # 80
MEL_WINDOW = 16  # mel steps fed to the model per video frame (0.2 s)


def load_mono16k(path: Path) -> np.ndarray:
    """Decode any audio file to float32 mono samples at 16 kHz in [-1, 1]."""
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as c:
            stream = c.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, IndexError, OSError) as e:
        raise MediaError(
            f"audio cannot be decoded to 16 kHz: {e}",
            code="audio_invalid",
            stage="preparing",
            hint="check that the audio file plays",
        ) from e
    if not chunks:
        return np.zeros(0, np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


# -- the mel filter bank (Slaney scale and area normalisation, as librosa's default) ----
_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15.0
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    lin = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, lin)


def mel_filters(
    sr: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters, each scaled to unit area (Slaney)."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_MEL_BASIS = mel_filters()


STFT_CHUNK = 1000  # frames transformed at a time (5 s): the FFT's float64 work stays ~10 MB


def stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| (1 + n_fft//2, frames): periodic Hann window, centred with reflect padding.

    Done STFT_CHUNK frames at a time into the float32 result: each frame's transform is its
    own, so the values are the same as in one call, while one call on a 10-minute track
    would hold 0.8 GB of complex128 at once (180 s: +231 MB of the worker's peak)."""
    pad = N_FFT // 2
    if len(y) <= pad:  # reflect padding needs more samples than the pad
        y = np.pad(y, (0, pad + 1 - len(y)))
    padded = np.pad(y, pad, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)).astype(np.float32)
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0])
    )
    out = np.empty((1 + N_FFT // 2, n_frames), np.float32)
    for start in range(0, n_frames, STFT_CHUNK):
        part = frames[start : start + STFT_CHUNK]
        out[:, start : start + len(part)] = np.abs(np.fft.rfft(part * window, axis=1)).T
    return out


def normalize_db(s_db: np.ndarray) -> np.ndarray:
    """Map [MIN_LEVEL_DB, 0] dB onto [-MAX_ABS, MAX_ABS], clipped."""
    return np.clip(
        (2 * MAX_ABS) * ((s_db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS, -MAX_ABS, MAX_ABS
    ).astype(np.float32)


def melspectrogram(samples: np.ndarray) -> np.ndarray:
    """The Wav2Lip input features: (80, 1 + len // 200) float32 in [-4, 4]."""
    y = samples.astype(np.float32, copy=False)
    emphasised = np.empty_like(y)
    if len(y):
        emphasised[0] = y[0]
        emphasised[1:] = y[1:] - PREEMPHASIS * y[:-1]
    mel = _MEL_BASIS @ stft_magnitude(emphasised)
    s_db = 20 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    return normalize_db(s_db)


def mel_window_start(frame: int, fps: float) -> int:
    """First mel step of video frame `frame` (Wav2Lip: int(80 / fps * frame))."""
    return int(MEL_STEPS_PER_SECOND / fps * frame)


def mel_window(mel: np.ndarray, frame: int, fps: float) -> np.ndarray:
    """The (80, 16) mel window for one video frame; the last full window past the end."""
    start = mel_window_start(frame, fps)
    total = mel.shape[1]
    if total < MEL_WINDOW:
        out = np.full((mel.shape[0], MEL_WINDOW), -MAX_ABS, np.float32)
        out[:, :total] = mel
        return out
    if start + MEL_WINDOW > total:
        start = total - MEL_WINDOW
    return mel[:, start : start + MEL_WINDOW]


def rms_envelope(
    samples: np.ndarray, fps: float, n_frames: int, lead: float = 0.04, window: float = 0.05
) -> np.ndarray:
    """RMS loudness per video frame, taken `lead` seconds ahead (mouths move before sound)."""
    out = np.zeros(n_frames, np.float32)
    half = int(window * SAMPLE_RATE / 2)
    for i in range(n_frames):
        centre = int((i / fps + lead) * SAMPLE_RATE)
        seg = samples[max(0, centre - half) : centre + half]
        if len(seg):
            out[i] = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
    return out


def mouth_opening(rms: np.ndarray, attack: float = 0.6, release: float = 0.25) -> np.ndarray:
    """0..1 opening per frame from an RMS envelope: gated, normalised, smoothed.

    Loudness is scaled by the 95th percentile of the voiced frames, gated below
    10% of it (room noise keeps the mouth closed), then followed with a fast
    attack and a slower release so that the mouth does not flutter.
    """
    if not len(rms) or float(rms.max()) <= 0:
        return np.zeros_like(rms)
    ref = float(np.percentile(rms[rms > 0], 95)) or float(rms.max())
    level = np.clip(rms / ref, 0, 1)
    level = np.clip((level - 0.1) / 0.9, 0, 1)
    out = np.empty_like(level)
    state = 0.0
    for i, x in enumerate(level):
        k = attack if x > state else release
        state += k * (x - state)
        out[i] = state
    return out
