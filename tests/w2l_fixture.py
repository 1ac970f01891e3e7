"""A Wav2Lip checkpoint with random weights in the published format, made to be a non-vacuous test subject.

Default initialisation gives a generator whose output sits near 0.5 whatever
the input; so the BatchNorm running statistics are set from real activations
(the astronaut's face, real mel windows) and the last convolution is scaled
until the output spans most of [0, 1] and visibly depends on the audio.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from support import astronaut

from dropbox_daemon.render.engines.wav2lip import FACE, model_inputs
from dropbox_daemon.render.engines.wav2lip_net import Wav2LipNet
from dropbox_daemon.render.media import audio as A


def real_inputs(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n mel windows from a loud/quiet signal and n face crops of the astronaut, slightly jittered."""
    rng = np.random.default_rng(seed)
    t = np.arange(3 * A.SAMPLE_RATE) / A.SAMPLE_RATE
    speechy = (0.5 * np.sin(2 * np.pi * 180 * t) * np.abs(np.sin(2 * np.pi * 2.5 * t))).astype(
        np.float32
    )
    speechy += 0.02 * rng.standard_normal(len(t)).astype(np.float32)
    mel = A.melspectrogram(speechy)
    mels = np.stack([A.mel_window(mel, i * 9, 25) for i in range(n)]).astype(np.float32)
    face = astronaut()[60:190, 160:290]
    crops = []
    for _ in range(n):
        dx, dy = rng.integers(-4, 5, 2)
        crops.append(
            cv2.resize(np.roll(face, (dy, dx), (0, 1)), (FACE, FACE), interpolation=cv2.INTER_AREA)
        )
    return mels, model_inputs(crops)


def to_torch(mel: np.ndarray, faces: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(mel).unsqueeze(1), torch.from_numpy(faces).permute(
        0, 3, 1, 2
    ).contiguous()


def calibrated_net(seed: int = 0) -> Wav2LipNet:
    torch.manual_seed(seed)
    net = Wav2LipNet()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
    net.train()
    with torch.no_grad():
        for s in range(3):
            net(*to_torch(*real_inputs(16, seed=s)))
    net.eval()
    # spread the output: scale the last convolution so the logits have a std of ~2
    last = net.output_block[1]
    with torch.no_grad():
        feats = net.output_block[0](_pre_output(net, *to_torch(*real_inputs(8))))
        logits = last(feats)
        scale = 2.0 / float(logits.std())
        last.weight.mul_(scale)
        last.bias.sub_(float((last(feats)).mean()))
    return net


def _pre_output(net: Wav2LipNet, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    x = net.audio_encoder(mel)
    skips, f = [], faces
    for block in net.face_encoder_blocks:
        f = block(f)
        skips.append(f)
    for block in net.face_decoder_blocks:
        x = torch.cat((block(x), skips.pop()), dim=1)
    return x


def save_published(net: Wav2LipNet, path: Path) -> Path:
    """Save as the published checkpoints are: {"state_dict": {"module.<name>": tensor}}."""
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "global_step": 0},
        path,
    )
    return path
