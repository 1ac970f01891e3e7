"""Colour: what a template's code values mean, how they become the BGR the pipeline works in,
and how the result is tagged so that players show it as the template was meant to look.

Results are SDR BT.709, limited range, tagged so. A template's own tags choose the decoder's
conversion (BT.601 from SD cameras, BT.709, BT.2020, full range from phones and JPEGs); an
untagged one is taken as players take it: BT.709 from 720 lines up, BT.601 below. HLG and PQ
(HDR10) templates are tone-mapped to SDR here, in numpy: the bundled ffmpeg binary has zscale,
but the in-process decoder (PyAV's libraries) has not, and a round trip through the binary
would cost an extra encode and decode of every template. `[output] hdr = "keep"` instead keeps
an HDR template's code values and tags the result BT.2020 HLG or PQ, 10-bit.

The conversion is the inverse of BT.2408's mapping of SDR into HDR: SDR reference white is
203 cd/m2 (HLG's 75 % signal), SDR is display light through BT.1886's gamma 2.4 (as ffmpeg's
zscale takes it, so a PQ file zscale made from SDR comes back as that SDR), HLG's OOTF is that of a 1000 cd/m2 display (system gamma 1.2), the BT.2020
primaries are converted to BT.709's in linear light, and light above SDR white rolls off
smoothly (max-RGB, so hues hold) instead of clipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import cv2
import numpy as np

# FFmpeg's AVColorSpace / AVColorTransferCharacteristic / AVColorRange codes as PyAV reports them
_MATRIX = {
    1: "ITU709",
    4: "FCC",
    5: "ITU601",
    6: "ITU601",
    7: "SMPTE240M",
    9: "BT2020",
    10: "BT2020",
}
_MATRIX_NAME = {"ITU709": "BT.709", "ITU601": "BT.601", "BT2020": "BT.2020", "FCC": "FCC", "SMPTE240M": "SMPTE 240M"}  # fmt: skip
TRC_PQ, TRC_HLG = 16, 18
RANGE_FULL = 2
PRIMARIES_BT2020 = 9
HD_LINES = 720  # untagged pictures from this height up are BT.709, below BT.601 (as players guess)

Transfer = Literal["sdr", "pq", "hlg"]
HdrMode = Literal["tonemap", "keep"]

SDR_WHITE_NITS = 203.0  # BT.2408: HDR reference white, where SDR's 100 % is placed
HLG_PEAK_NITS = 1000.0  # the display HLG's OOTF is evaluated for
HLG_GAMMA = 1.2
ROLL_OFF_KNEE = 0.9  # linear SDR level (1.0 = white) above which highlights are compressed

# BT.2020 -> BT.709 primaries in linear light (inverse of BT.2087's BT.709 -> BT.2020)
BT2020_TO_BT709 = np.array(
    [
        [1.660491, -0.587641, -0.072850],
        [-0.124550, 1.132900, -0.008349],
        [-0.018151, -0.100579, 1.118730],
    ],
    np.float32,
)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)


@dataclass(frozen=True)
class Colour:
    """How a template's pictures are coded: the Y'CbCr matrix (swscale's name), the range
    and the transfer; `tagged` says whether the file stated the matrix."""

    matrix: str = "ITU709"
    full_range: bool = False
    transfer: Transfer = "sdr"
    tagged: bool = True

    @classmethod
    def of_frame(cls, frame: Any) -> Colour:
        """The colour of a decoded frame, from its tags (guessed from its size where absent)."""
        trc = int(frame.color_trc or 0)
        transfer: Transfer = "pq" if trc == TRC_PQ else "hlg" if trc == TRC_HLG else "sdr"
        matrix = _MATRIX.get(int(frame.colorspace or 0))
        tagged = matrix is not None
        if matrix is None:
            wide = transfer != "sdr" or int(frame.color_primaries or 0) == PRIMARIES_BT2020
            matrix = "BT2020" if wide else "ITU709" if frame.height >= HD_LINES else "ITU601"
        name = frame.format.name
        full = int(frame.color_range or 0) == RANGE_FULL or name.startswith("yuvj")
        return cls(matrix, full or not name.startswith(("yuv", "nv", "gray")), transfer, tagged)

    @property
    def hdr(self) -> bool:
        return self.transfer != "sdr"

    def describe(self) -> str:
        """For the job's log: "BT.709 limited range", "BT.2020 HLG limited range (untagged)"."""
        words = [_MATRIX_NAME.get(self.matrix, self.matrix)]
        if self.hdr:
            words.append(self.transfer.upper())
        words.append("full range" if self.full_range else "limited range")
        return " ".join(words) + ("" if self.tagged else " (untagged: guessed from its size)")

    def decode_args(self) -> dict[str, Any]:
        """swscale's source description for PyAV's reformat (RGB out is always full range)."""
        return {
            "src_colorspace": self.matrix,
            "src_color_range": "JPEG" if self.full_range else "MPEG",
            "dst_color_range": "JPEG",
        }


@dataclass(frozen=True)
class OutputColour:
    """How the result is coded and tagged: SDR BT.709, or an HDR template's own transfer
    where `[output] hdr = "keep"` asked for it."""

    transfer: Transfer = "sdr"

    @classmethod
    def for_template(cls, transfer: str, hdr: str) -> OutputColour:
        """SDR, unless the template is HLG or PQ and `[output] hdr = "keep"`."""
        if transfer in ("hlg", "pq") and hdr == "keep":
            return cls("hlg" if transfer == "hlg" else "pq")
        return cls()

    @property
    def ten_bit(self) -> bool:
        return self.transfer != "sdr"

    @property
    def packed_here(self) -> bool:
        """Whether the worker hands the encoder Y'CbCr 4:2:0 it made itself (SDR: I420Packer)
        rather than BGR that ffmpeg's swscale converts (a kept HDR template's 10-bit)."""
        return not self.ten_bit

    def describe(self) -> str:
        if self.transfer == "sdr":
            return "BT.709 SDR, limited range, 8-bit"
        return f"BT.2020 {self.transfer.upper()}, limited range, 10-bit"

    def ffmpeg_filter(self, packed: bool = False) -> str:
        """The frames tagged as the result is coded, after swscale's RGB -> Y'CbCr conversion
        unless they come `packed` (Y'CbCr 4:2:0 made by I420Packer)."""
        tags = self.ffmpeg_tags()
        matrix = tags["colorspace"]
        scale_matrix = "bt2020" if matrix == "bt2020nc" else matrix
        convert = f"scale=out_color_matrix={scale_matrix}:out_range=tv,format={self.pix_fmt},"
        return (
            f"{'' if packed else convert}setparams=range=tv:color_primaries="
            f"{tags['color_primaries']}:color_trc={tags['color_trc']}:colorspace={matrix}"
        )

    def ffmpeg_tags(self) -> dict[str, str]:
        """The stream's colour description, as the container and the bitstream carry it."""
        if self.transfer == "sdr":
            return {"color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709"}
        trc = "smpte2084" if self.transfer == "pq" else "arib-std-b67"
        return {"color_primaries": "bt2020", "color_trc": trc, "colorspace": "bt2020nc"}

    @property
    def pix_fmt(self) -> str:
        return "yuv420p10le" if self.ten_bit else "yuv420p"


def _bgr_to_ycbcr709() -> np.ndarray:
    """cv2.transform's 3x4 matrix: BT.709 R'G'B' (full range, in BGR order) to Y'CbCr, limited
    range (Y' 16-235, Cb and Cr 16-240 around 128)."""
    kr, kb = 0.2126, 0.0722
    luma = np.array([kr, 1 - kr - kb, kb])
    y = luma * 219 / 255
    cb = (np.array([0, 0, 1]) - luma) / (2 * (1 - kb)) * 224 / 255
    cr = (np.array([1, 0, 0]) - luma) / (2 * (1 - kr)) * 224 / 255
    rgb = np.stack([y, cb, cr])
    return np.hstack([rgb[:, ::-1], [[16], [128], [128]]]).astype(np.float32)


BGR_TO_YCBCR709 = _bgr_to_ycbcr709()


class I420Packer:
    """A BGR frame (BT.709 R'G'B', full range) as the planar Y'CbCr 4:2:0 (I420, BT.709,
    limited range) the encoder takes: one fixed-point matrix pass (cv2.transform), luma taken
    out, chroma the mean of each 2x2 block (centre-sited: the encode tags it so). Within 1 code
    value of the exact conversion; 1.3 ms a 720p frame on one core, against 5 ms for swscale's
    conversion in ffmpeg (the encoder process took 1.8 core-s less for 350 frames), and half
    the bytes through the pipe. One buffer, reused: the result is valid until the next call."""

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"4:2:0 needs an even frame size, not {width}x{height}")
        self.half = (width // 2, height // 2)
        luma, chroma = width * height, self.half[0] * self.half[1]
        self.buf = np.empty(luma + 2 * chroma, np.uint8)
        self.planes = (
            self.buf[:luma].reshape(height, width),
            self.buf[luma : luma + chroma].reshape(self.half[1], self.half[0]),
            self.buf[luma + chroma :].reshape(self.half[1], self.half[0]),
        )

    def __call__(self, bgr: np.ndarray) -> memoryview:
        ycc = cv2.transform(bgr, BGR_TO_YCBCR709)
        cv2.extractChannel(ycc, 0, dst=self.planes[0])
        small = cv2.resize(ycc, self.half, interpolation=cv2.INTER_AREA)
        cv2.extractChannel(small, 1, dst=self.planes[1])
        cv2.extractChannel(small, 2, dst=self.planes[2])
        return self.buf.data


def pq_to_nits(e: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084's EOTF: signal 0..1 -> cd/m2."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(e, 0, 1), 1 / m2)
    return 10000 * np.power(np.maximum(p - c1, 0) / (c2 - c3 * p), 1 / m1)


def hlg_to_scene(e: np.ndarray) -> np.ndarray:
    """BT.2100 HLG's inverse OETF: signal 0..1 -> scene light 0..1."""
    a = 0.17883277
    b, c = 1 - 4 * a, 0.5 - a * np.log(4 * a)
    e = np.clip(e, 0, 1)
    return np.where(e <= 0.5, e * e / 3, (np.exp((np.maximum(e, 0.5) - c) / a) + b) / 12)


def bt1886_inverse(light: np.ndarray) -> np.ndarray:
    """BT.1886's EOTF inverted (a gamma 2.4 display, black at 0): display light 0..1 ->
    signal 0..1."""
    return np.power(np.clip(light, 0, 1), 1 / 2.4)


@cache
def _linear_lut(transfer: Transfer) -> np.ndarray:
    """16-bit code value -> light (PQ: relative to SDR white; HLG: scene light)."""
    e = np.arange(65536, dtype=np.float64) / 65535
    lut = pq_to_nits(e) / SDR_WHITE_NITS if transfer == "pq" else hlg_to_scene(e)
    return lut.astype(np.float32)


OETF_STEPS = 65536  # steps of SDR light: the gamma is steep near black


@cache
def _oetf_lut() -> np.ndarray:
    """SDR display light in OETF_STEPS steps of 0..1 -> 8-bit code value."""
    light = np.arange(OETF_STEPS + 1, dtype=np.float64) / OETF_STEPS
    return np.round(bt1886_inverse(light) * 255).astype(np.uint8)


def roll_off(m: np.ndarray) -> np.ndarray:
    """Linear level -> SDR level: unchanged up to the knee, then easing towards 1.0 (slope 1
    at the knee, so no visible edge)."""
    k = ROLL_OFF_KNEE
    return np.where(m <= k, m, k + (1 - k) * (1 - np.exp(-(np.maximum(m, k) - k) / (1 - k))))


def tone_map(rgb48: np.ndarray, transfer: Transfer) -> np.ndarray:
    """An (h, w, 3) uint16 R'G'B' picture in BT.2020 HLG or PQ -> (h, w, 3) uint8 BGR in
    BT.709 SDR."""
    light = _linear_lut(transfer)[rgb48]
    if transfer == "hlg":  # scene light -> display light of a 1000 cd/m2 display -> SDR relative
        y = np.maximum(light @ BT2020_LUMA, np.float32(1e-6))
        gain = np.power(y, np.float32(HLG_GAMMA - 1))
        gain *= np.float32(HLG_PEAK_NITS / SDR_WHITE_NITS)
        light *= gain[..., None]
    light = light @ _RGB_TO_BGR709  # BT.2020 RGB in, BT.709 BGR out
    np.maximum(light, 0, out=light)
    peak = np.maximum(
        np.maximum(light[..., 0], light[..., 1]), light[..., 2]
    )  # max(axis=-1) is 15x slower
    over = peak > ROLL_OFF_KNEE
    if over.any():  # only the highlights pay for the roll-off
        p = peak[over]
        light[over] *= (roll_off(p) / p)[:, None].astype(np.float32)
    light *= np.float32(OETF_STEPS)
    light += np.float32(0.5)
    np.minimum(light, np.float32(OETF_STEPS), out=light)
    return _oetf_lut()[light.astype(np.int32)]


_RGB_TO_BGR709 = np.ascontiguousarray(BT2020_TO_BT709[::-1].T)
