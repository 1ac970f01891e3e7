"""The Wav2Lip generator as published, and its checkpoints as distributed.

The network is written here with the module names of the published model, so
that `wav2lip.pth` / `wav2lip_gan.pth` (`{"state_dict": {"module.<name>": ...}}`)
load strictly, with the missing or unexpected keys named when a file is wrong.
Only the worker process imports this module (and torch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dropbox_daemon.errors import EngineError

SHOWN_KEYS = 6  # missing/unexpected checkpoint keys named in an error


class Conv(nn.Module):
    """conv -> BatchNorm -> (+ input) -> ReLU, named as the published model names it."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        s: int | tuple[int, int],
        p: int,
        residual: bool = False,
        transpose: bool = False,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        conv: nn.Module = (
            nn.ConvTranspose2d(cin, cout, k, s, p, output_padding)
            if transpose
            else nn.Conv2d(cin, cout, k, s, p)
        )
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _res(c: int, n: int) -> list[Conv]:
    return [Conv(c, c, 3, 1, 1, residual=True) for _ in range(n)]


def _up(cin: int, cout: int, n_res: int, stride: int = 2) -> nn.Sequential:
    pad, out_pad = (1, 1) if stride == 2 else (0, 0)
    return nn.Sequential(
        Conv(cin, cout, 3, stride, pad, transpose=True, output_padding=out_pad), *_res(cout, n_res)
    )


class Wav2LipNet(nn.Module):
    """The generator: (B, 1, 80, 16) mel windows + (B, 6, 96, 96) faces -> (B, 3, 96, 96) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv(6, 16, 7, 1, 3)),  # 96
                nn.Sequential(Conv(16, 32, 3, 2, 1), *_res(32, 2)),  # 48
                nn.Sequential(Conv(32, 64, 3, 2, 1), *_res(64, 3)),  # 24
                nn.Sequential(Conv(64, 128, 3, 2, 1), *_res(128, 2)),  # 12
                nn.Sequential(Conv(128, 256, 3, 2, 1), *_res(256, 2)),  # 6
                nn.Sequential(Conv(256, 512, 3, 2, 1), *_res(512, 1)),  # 3
                nn.Sequential(Conv(512, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0)),  # 1
            ]
        )
        self.audio_encoder = nn.Sequential(
            Conv(1, 32, 3, 1, 1),
            *_res(32, 2),
            Conv(32, 64, 3, (3, 1), 1),
            *_res(64, 2),
            Conv(64, 128, 3, 3, 1),
            *_res(128, 2),
            Conv(128, 256, 3, (3, 2), 1),
            *_res(256, 1),
            Conv(256, 512, 3, 1, 0),
            Conv(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv(512, 512, 1, 1, 0)),
                _up(1024, 512, 1, stride=1),  # 3
                _up(1024, 512, 2),  # 6
                _up(768, 384, 2),  # 12
                _up(512, 256, 2),  # 24
                _up(320, 128, 2),  # 48
                _up(160, 64, 2),  # 96
            ]
        )
        self.output_block = nn.Sequential(
            Conv(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(mel)
        skips = []
        f = faces
        for block in self.face_encoder_blocks:
            f = block(f)
            skips.append(f)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with any `module.` prefix removed; EngineError if it cannot be read."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise EngineError(
            f"wav2lip weights {path} do not exist",
            code="weights_missing",
            stage="preparing",
            hint="set [models] wav2lip to the path of wav2lip.pth or wav2lip_gan.pth",
        ) from e
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind: a damaged file
        raise EngineError(
            f"wav2lip weights {path} cannot be read: {type(e).__name__}: {str(e)[:200]}",
            code="weights_invalid",
            stage="preparing",
            hint="the file is damaged or not a PyTorch checkpoint: copy it again",
        ) from e
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EngineError(
            f"wav2lip weights {path} hold no state_dict of tensors",
            code="weights_invalid",
            stage="preparing",
            hint="use the published wav2lip.pth or wav2lip_gan.pth",
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_reference(path: Path) -> Wav2LipNet:
    """The network exactly as published (unfused, fp32, eval): strict load, keys named on mismatch.
    The network is built empty and takes the checkpoint's tensors as they are, so loading
    holds one copy of the weights, not two (145 MB less at the worker's start)."""
    sd = {  # fp32 as the network computes (a checkpoint saved in half precision included)
        k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(path).items()
    }
    with torch.device("meta"):  # no memory until the checkpoint's own tensors are put in
        net = Wav2LipNet()
    want, have = set(net.state_dict()), set(sd)
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:SHOWN_KEYS])})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:SHOWN_KEYS])})"
            )
        raise EngineError(
            f"{path} is not a Wav2Lip generator checkpoint: " + "; ".join(parts),
            code="weights_mismatch",
            stage="preparing",
            hint="use wav2lip.pth or wav2lip_gan.pth (not the discriminator or another model)",
        )
    try:
        net.load_state_dict(sd, strict=True, assign=True)  # the tensors themselves: no copy
    except RuntimeError as e:
        raise EngineError(
            f"{path} does not fit the Wav2Lip generator: {str(e)[:300]}",
            code="weights_mismatch",
            stage="preparing",
            hint="use the published checkpoints",
        ) from e
    return net.eval()


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every BatchNorm into the convolution before it (in place); inference only."""
    for module in net.modules():
        if isinstance(module, Conv):
            conv, bn = module.conv_block[0], module.conv_block[1]
            fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
            module.conv_block = nn.Sequential(fused)
    return net
