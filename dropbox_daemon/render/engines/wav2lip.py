"""wav2lip: the engine that renders with the published Wav2Lip generator (wav2lip_net.py).

At load time BatchNorm is folded into the convolutions, the model is put in
channels_last and, where the CPU has AMX or on CUDA, the bulk
of it runs in reduced precision unless the config says otherwise. Faces are
batched; on CUDA one batch is in flight while the host prepares the next; on a CPU
of 2 cores or more two batches run at once, each on half of them.
Only the worker process imports this module (and torch).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from loguru import logger

from dropbox_daemon.errors import EngineError
from dropbox_daemon.render.compose import feathered_box
from dropbox_daemon.render.engines.base import (
    AudioFeatures,
    Box,
    Engine,
    FaceFrame,
    Patch,
    RenderContext,
)
from dropbox_daemon.render.engines.precision import (
    DTYPE_NAMES,
    EXACT_FACE_BLOCKS,
    choose_dtype,
    describe_precision,
)
from dropbox_daemon.render.engines.wav2lip_net import fold_batchnorm, load_reference

FACE = 96  # the model's face crop, pixels
# Frames per model call on the CPU where [models] batch_size is 0, by the precision it runs.
# Two calls run at once on 2 cores and more (cpus.model_streams), each holding its batch's
# activations: fp32 at 4 and bf16 at 8 keep the process tree under 1 GB on a 720p job at 14,
# 60 and 180 s of audio (docs/benchmarks.md); two bf16 calls of 16 took it to 1010 MB for
# 3-5% more speed. The frames themselves are not held: they are read back from disk.
CPU_BATCH = {torch.float32: 4, torch.bfloat16: 8}


@dataclass(frozen=True)
class Crop:
    """One frame as a batch needs it: its index, its box, its face at the model's size."""

    index: int
    box: Box | None
    pixels: np.ndarray | None

    @classmethod
    def of(cls, ff: FaceFrame) -> Crop:
        if ff.box is None:
            return cls(ff.index, None, None)
        x0, y0, x1, y1 = ff.box
        face = cv2.resize(ff.frame[y0:y1, x0:x1], (FACE, FACE), interpolation=cv2.INTER_AREA)
        return cls(ff.index, ff.box, face)


class Pending:
    """A batch on its way: `result()` gives (B, 96, 96, 3) float32 once it is done."""

    def __init__(
        self,
        out: np.ndarray | torch.Tensor | list[Pending] | Future[np.ndarray],
        done: torch.cuda.Event | None = None,
        keep: tuple = (),
    ) -> None:
        self.out, self.done, self.keep = out, done, keep  # keep: inputs in flight stay alive

    def result(self) -> np.ndarray:
        if isinstance(self.out, list):
            return np.concatenate([p.result() for p in self.out])
        if isinstance(self.out, Future):
            return self.out.result()
        if self.done is not None:
            self.done.synchronize()
        return self.out if isinstance(self.out, np.ndarray) else self.out.float().numpy()


# The engine pastes back the lower face only (lower_face_mask: nothing above 0.4 of its
# height, row 38.4 of the model's 96, and the cubic resize back reads two rows further up).
# So the last two decoder blocks and the output block, at 48x48 and 96x96 (half the model's
# time), run on the rows from LOWER_CROP of their 24x24 input down. Every 3x3 convolution
# after the crop sees zero padding at the cut instead of the rows above it, one row more each
# (the transposed convolutions scatter downwards and add none; each doubles what came
# before): the output differs from the full network's down to row 4 * LOWER_CROP + 6 = 30 and
# is bit for bit the same from row 31 (measured; tests/test_wav2lip.py). EXACT_FROM keeps 3
# rows of margin; the rows above it are the template's own face, what the mask keeps there.
LOWER_CROP = 6  # rows of the 24x24 decoder maps dropped before blocks 5, 6 and the output
EXACT_FROM = 4 * LOWER_CROP + 10  # 34: the first output row used; the paste-back reads from 36
CROP_BLOCK = 5  # the first decoder block that runs on the crop


def exact_fp32() -> None:
    """fp32 means fp32 on the GPU too: no TF32 (cuDNN's default for convolutions on Ampere and
    later), which would round the exact blocks, `precision = "fp32"` and the bench's fp32
    column to 10 mantissa bits."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


class FastWav2Lip:
    """The inference model: folded, channels_last, on its device and precision. With
    `lower_only`, rows above EXACT_FROM are not generated but copied from the input face."""

    def __init__(
        self, path: Path, *, device: str = "cpu", precision: str = "auto", lower_only: bool = False
    ) -> None:
        self.device = device
        self.lower_only = lower_only
        self.dtype = choose_dtype(precision, device)
        exact_fp32()
        net = fold_batchnorm(load_reference(path)).to(device, memory_format=torch.channels_last)
        for i, block in enumerate(net.face_encoder_blocks):
            if i >= EXACT_FACE_BLOCKS:
                block.to(self.dtype)
        net.face_decoder_blocks.to(self.dtype)
        net.output_block.to(self.dtype)
        self.net = net.eval()

    def __call__(self, mel: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """mel (B, 80, 16) float32, faces (B, 96, 96, 6) float32 in [0, 1] -> (B, 96, 96, 3) float32."""
        return self.submit(mel, faces).result()

    @torch.inference_mode()
    def submit(self, mel: np.ndarray, faces: np.ndarray) -> Pending:
        """Start one batch. On CUDA it runs asynchronously: the inputs go through page-locked
        memory, the output comes back into page-locked memory, and the caller prepares the
        next batch while the GPU works; `result()` waits. On the CPU it runs here and now."""
        m, f = torch.from_numpy(mel), torch.from_numpy(faces)
        if self.device == "cuda":
            m, f = m.pin_memory(), f.pin_memory()
        m = m.to(self.device, non_blocking=True).unsqueeze(1)
        f = f.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        out = self.forward(m, f.contiguous(memory_format=torch.channels_last))
        out = out.permute(0, 2, 3, 1)
        if self.device != "cuda":
            return Pending(out.float().numpy())
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event(blocking=True)  # result() sleeps on it instead of spinning a core
        done.record()
        return Pending(host, done, keep=(m, f))

    def fit_batch(self, want: int) -> int:
        """The largest batch up to `want` whose activations fit in 60% of the GPU's free memory,
        from the peak of a probe batch; halving on out-of-memory stays as the safety net."""
        if self.device != "cuda":
            return want
        probe = 8
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self(np.zeros((probe, 80, 16), np.float32), np.zeros((probe, FACE, FACE, 6), np.float32))
        per_frame = max(1, (torch.cuda.max_memory_allocated() - base) // probe)
        free, _ = torch.cuda.mem_get_info()
        return max(1, min(want, int(0.6 * free / per_frame)))

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Wav2LipNet.forward with each part in its own precision."""
        net, low = self.net, self.dtype
        x = net.audio_encoder(mel).to(low)
        skips = []
        f = faces
        for i, block in enumerate(net.face_encoder_blocks):
            f = block(f if i < EXACT_FACE_BLOCKS else f.to(low))
            skips.append(f.to(low))
        top = 0  # rows of the current resolution cut off above (lower_only)
        for i, block in enumerate(net.face_decoder_blocks):
            if self.lower_only and i == CROP_BLOCK:
                x, top = x[:, :, LOWER_CROP:], LOWER_CROP
            y = block(x)
            top *= y.shape[2] // x.shape[2]  # an upsampling block doubles the rows cut off
            x = torch.cat((y, skips.pop()[:, :, top:]), dim=1)
        out = net.output_block(x)
        if not self.lower_only:
            return out
        # channels 3-5 are the unmasked face (model_inputs): its rows above EXACT_FROM are the
        # template's own, kept in fp32 (in bf16 or fp16 they would come back rounded)
        face = faces[:, 3:, :EXACT_FROM].float()
        return torch.cat((face, out[:, :, EXACT_FROM - top :].float()), dim=2)


def model_inputs(crops: list[np.ndarray]) -> np.ndarray:
    """96x96 BGR face crops -> (B, 96, 96, 6) in [0, 1]: lower half masked, then the full face."""
    faces = np.stack(crops).astype(np.float32) / 255.0
    masked = faces.copy()
    masked[:, FACE // 2 :] = 0
    return np.concatenate([masked, faces], axis=3)


class Wav2LipEngine(Engine):
    name = "wav2lip"

    def __init__(
        self,
        weights: Path | None,
        *,
        precision: str = "auto",
        batch: int = 0,  # 0: CPU_BATCH by precision
        cuda_batch: int = 128,
        host_bytes: int = 1 << 30,
        cpu_streams: int = 0,  # 0: cpus.model_streams chooses
    ) -> None:
        self.weights = weights
        self.cpu_streams = cpu_streams
        self.streams: ThreadPoolExecutor | None = None  # on the CPU: the model calls at once
        self.host_bytes = host_bytes
        self.precision = precision
        self.batch = batch
        self.cuda_batch = cuda_batch
        self.model: FastWav2Lip | None = None
        self.in_flight = 0  # batches started ahead of the one being pasted back (1 on CUDA)
        self.loads = 0
        self.fitted, self._fits = batch, 0  # the batch the load chose; batches since an OOM

    def load(self) -> None:
        if self.weights is None:
            raise EngineError(
                "no wav2lip weights configured",
                code="weights_missing",
                stage="preparing",
                hint="set [models] wav2lip in config.toml, or use engine preview",
            )
        from dropbox_daemon import cpus

        share = cpus.this_share()
        cpus.apply(share)  # every core, or this GPU's share of them
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            self._cpu_streams(share)
        self.model = FastWav2Lip(
            self.weights, device=device, precision=self.precision, lower_only=True
        )
        logger.info(describe_precision(self.precision, device, self.model.dtype))
        self.device = f"{device}/{DTYPE_NAMES[self.model.dtype]}"
        self.model_on_cpu = device == "cpu"
        if self.batch == 0:
            self.batch = CPU_BATCH.get(self.model.dtype, 8)
            if device == "cpu":
                logger.info(
                    "wav2lip batch {} on the CPU in {} ([models] batch_size = 0 chooses by precision)",
                    self.batch,
                    DTYPE_NAMES[self.model.dtype],
                )
        if device == "cuda":
            self.batch = self.model.fit_batch(self.cuda_batch)
            self.in_flight = 1
            logger.info(
                "wav2lip batch {} on the GPU ({} configured, {:.1f} GiB free)",
                self.batch,
                self.cuda_batch,
                torch.cuda.mem_get_info()[0] / 2**30,
            )
        self.fitted, self._fits = self.batch, 0
        self.loads += 1

    def _cpu_streams(self, share: int) -> None:
        """Split the share into model calls running side by side, each on its own threads.

        One call on every core stops at each layer's end until its slowest thread is done:
        where the encoder, decoder or compositor takes one of its cores for a moment, all of
        them wait. Two calls of half the threads each lose only what was taken (2 cores,
        bf16 batch 16: 20.4-21.0 -> 22.3-23.3 frames/s alone, 14.5 -> 18.6 beside a
        one-thread x264 encode; docs/benchmarks.md)."""
        from dropbox_daemon import cpus

        n = cpus.model_streams(self.cpu_streams, share)
        threads = max(1, share // n)
        torch.set_num_threads(threads)
        if n > 1 and self.streams is None:
            self.streams = ThreadPoolExecutor(n, thread_name_prefix="wav2lip-model")
        self.in_flight = n if n > 1 else 0
        logger.info(
            "wav2lip on the CPU: {} model call(s) at once, {} thread(s) each "
            "([models] cpu_streams = 0 chooses by cores)",
            n,
            threads,
        )

    def render(
        self, frames: Iterator[FaceFrame], audio: AudioFeatures, ctx: RenderContext
    ) -> Iterator[Patch | None]:
        """Batches of `batch` faces; with `in_flight` batches started before the oldest is
        pasted back (on CUDA: the GPU runs batch k while the host crops k+1 and pastes k-1;
        on the CPU with two calls at once: both run while this thread crops and pastes)."""
        assert self.model is not None
        # each frame is cropped as it arrives and then let go (the chain holds it, or reads
        # it back from disk): a batch waiting to fill, or on its way, keeps crops and boxes
        started: deque[tuple[list[Box | None], Pending | None]] = deque()
        pending: list[Crop] = []
        n_faces = 0
        for ff in frames:
            pending.append(Crop.of(ff))
            n_faces += ff.box is not None
            if n_faces >= self.host_batch(ff.frame.nbytes):
                started.append(([c.box for c in pending], self._start(pending, audio)))
                pending, n_faces = [], 0
                while len(started) > self.in_flight:
                    yield from self._finish(*started.popleft())
        if pending:
            started.append(([c.box for c in pending], self._start(pending, audio)))
        while started:
            yield from self._finish(*started.popleft())

    def host_batch(self, frame_bytes: int) -> int:
        """The batch, cut so that the full frames held for the batches in flight (each until
        its patch returns) stay within host_bytes: a GPU batch of 128 at 4K would hold ~9 GB."""
        held = max(1, frame_bytes) * (self.in_flight + 1)
        return max(1, min(self.batch, self.host_bytes // held))

    def _start(self, items: list[Crop], audio: AudioFeatures) -> Pending | None:
        with_face = [c for c in items if c.pixels is not None]
        if not with_face:
            return None
        mel = np.stack([audio.mel_window(c.index) for c in with_face]).astype(np.float32)
        return self._submit(mel, model_inputs([c.pixels for c in with_face]))

    def _finish(self, boxes: list[Box | None], started: Pending | None) -> Iterator[Patch | None]:
        pred = iter(started.result() if started is not None else ())
        for box in boxes:
            if box is None:
                yield None
                continue
            x0, y0, x1, y1 = box
            face = np.clip(next(pred) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            pixels = cv2.resize(face, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            yield Patch(box, pixels, lower_face_mask(x1 - x0, y1 - y0))

    def _submit(self, mel: np.ndarray, faces: np.ndarray) -> Pending:
        """Start the model, splitting the batch in halves for as long as the GPU runs out of
        memory. The split runs after the failed call's frames are gone (inside the `except`
        its activations would still be held by the traceback); after GROW_AFTER batches in a
        row that fit, the batch doubles back towards the one the load fitted."""
        assert self.model is not None
        if self.streams is not None:  # on the CPU: in a thread of its own, beside the others
            return Pending(self.streams.submit(self.model, mel, faces))
        try:
            started = self.model.submit(mel, faces)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not out_of_memory(e) or len(mel) == 1:
                raise
            started = None
        if started is not None:
            self._fits += 1
            if self._fits >= GROW_AFTER and self.batch < self.fitted:
                self.batch, self._fits = min(self.fitted, self.batch * 2), 0
                logger.info("wav2lip batch back up to {} after {} that fit", self.batch, GROW_AFTER)
            return started
        release_cached_memory()
        half = len(mel) // 2
        self.batch, self._fits = max(1, min(self.batch, half)), 0
        logger.warning("GPU out of memory: wav2lip batch now {}", self.batch)
        return Pending(
            [self._submit(mel[:half], faces[:half]), self._submit(mel[half:], faces[half:])]
        )


GROW_AFTER = 32  # batches in a row that fit before a halved batch doubles again
# what CUDA libraries say when an allocation fails, where torch raises a RuntimeError and not
# its OutOfMemoryError (cuBLAS and cuDNN workspaces, page-locked host memory)
OOM_WORDS = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "cudaErrorMemoryAllocation",
    "CUDA_ERROR_OUT_OF_MEMORY",
)


def out_of_memory(e: BaseException) -> bool:
    """A failed GPU or page-locked allocation, by any of the ways torch reports one."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and any(w in str(e) for w in OOM_WORDS)


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lower_face_mask(w: int, h: int) -> np.ndarray:
    """Blend the generated lower face only: the eyes and brow stay the template's own, sharp."""
    m = feathered_box(w, h).copy()
    ramp = np.clip((np.arange(h) - 0.4 * h) / (0.15 * h), 0, 1).astype(np.float32)
    return m * ramp[:, None]
