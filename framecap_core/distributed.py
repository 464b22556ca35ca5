"""Several processes sharing one PMWD run (``torch.distributed``): NCCL on GPUs, gloo on CPUs.

PMWD's windows are independent within a step (paper 4.4), so a step's windows can be evaluated on different GPUs.
Every process of a process group holds the whole video ``x_t``; at each step:

1. the step's windows are cut into the chunks of ``window_batch_size`` windows that one process would evaluate in
   one denoiser call each (:func:`~framecap_core.windows.window_chunks`), and the chunks are split into
   contiguous, balanced shares of whole chunks (:func:`shard`: 11 chunks on 2 processes -> 6 and 5);
2. ONE collective (:class:`WindowExchange`) hands every process all the step's window predictions, in window order,
   together with a status flag per process;
3. every process fuses them exactly as one process would (same windows, same order, same weights) and takes the
   same solver step, so all processes hold the same latents — bit for bit the latents of a one-process run with the
   same ``window_batch_size``, for any number of processes: every window is predicted in the same call (a
   transformer's rounding depends on which windows share a call) and every sum is taken in the same order.

Processes share whole chunks, so a step needs at least as many chunks as processes to keep them all busy: with
``window_batch_size`` >= the number of windows (all windows in one call) one process evaluates them all.

Why gather predictions rather than all-reduce partial sums: an all-reduce adds partial sums in an order set by the
collective's algorithm, which differs from the one-process sum by rounding (~1e-7 relative) and between NCCL
algorithms; gathering fixes the order to the one-process order. It moves about ``window / stride`` times the
video's velocity per step (1.5x with Wan's 21/14), a few milliseconds on NVLink against seconds of transformer work.

Failure behaviour: an exception on a process (a NaN, out of memory, a cancel) is not raised at once; the process
joins the step's collective with its failure flag set, so every other process stops at the same step with a
:class:`~framecap_core.errors.DistributedError` naming the failed process and its message, and the failing
process re-raises its own exception. A process that dies or hangs makes the collectives of the others fail when
its connections close or after the process group's timeout (``init_process_group(timeout=...)``), reported as a
``DistributedError`` too. Before the first step the processes compare a fingerprint of the run (noise, schedule,
windows), so processes started with different arguments stop with a clear message instead of silently diverging.

Collectives use plain tensors (never pickled objects).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence

import torch

from .errors import DistributedError

__all__ = [
    "WindowExchange",
    "broadcast_tensors",
    "broadcast_text",
    "check_same_run",
    "group_rank_and_size",
    "init_from_environment",
    "agree_on_min",
    "shard",
    "shard_sizes",
    "window_shares",
]

MESSAGE_BYTES = 2048  # room for one process's error message in a failure report
DEFAULT_TIMEOUT_S = 600.0


def _dist():
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - every official torch build has it
        raise DistributedError("this PyTorch build has no torch.distributed; install a standard PyTorch build.")
    return dist


def group_rank_and_size(group) -> tuple[int, int]:
    """``(rank within the group, number of processes)``; ``(0, 1)`` for ``None`` (one process)."""
    if group is None:
        return 0, 1
    dist = _dist()
    if not dist.is_initialized():
        raise DistributedError(
            "a process group was passed but torch.distributed is not initialized; call "
            "torch.distributed.init_process_group first (torchrun sets the environment it needs), or pass "
            "process_group=None."
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _global_rank(group, group_rank: int) -> int:
    dist = _dist()
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def comm_device(group) -> torch.device:
    """Where collective buffers live: the current CUDA device for NCCL, else the CPU (gloo)."""
    backend = str(_dist().get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_sizes(count: int, world: int) -> list[int]:
    """How many of ``count`` items each of ``world`` processes takes: balanced, the first ones one more.

    ``shard_sizes(11, 2) == [6, 5]``, ``shard_sizes(2, 3) == [1, 1, 0]``.
    """
    base, extra = divmod(count, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def shard(items: Sequence, rank: int, world: int) -> list:
    """The contiguous share of ``items`` that process ``rank`` of ``world`` takes (see :func:`shard_sizes`);
    concatenating the shares in rank order gives ``items`` back."""
    sizes = shard_sizes(len(items), world)
    start = sum(sizes[:rank])
    return list(items[start:start + sizes[rank]])


def window_shares(windows: Sequence[int], batch: int, world: int) -> list[list[list[int]]]:
    """The chunks of ``windows`` (:func:`~framecap_core.windows.window_chunks`) each of ``world`` processes
    evaluates: contiguous, balanced shares of whole chunks. ``window_shares(range(5), 2, 2) == [[[0, 1], [2, 3]],
    [[4]]]``; concatenating every share's chunks in process order gives ``windows`` back."""
    from .windows import window_chunks

    chunks = window_chunks(windows, batch)
    return [shard(chunks, r, world) for r in range(world)]


def _collective(what: str, fn, *args, **kwargs):
    """Run a collective; a dead, hung or disconnected peer becomes a DistributedError naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # DistBackendError / gloo connection errors / timeouts are RuntimeErrors
        raise DistributedError(
            f"lost the other processes at {what}: a process died or did not answer within the process group's "
            f"timeout ({str(exc).splitlines()[0][:300]}); see that process's own error."
        ) from exc


def _encode_text(text: str, size: int) -> torch.Tensor:
    data = text.encode("utf-8")[:size]
    out = torch.zeros(size, dtype=torch.uint8)
    out[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else out[:0]
    return out


def _decode_text(t: torch.Tensor) -> str:
    data = bytes(t.cpu().tolist())
    return data.rstrip(b"\0").decode("utf-8", errors="replace")


def _gather_messages(group, message: str, what: str) -> list[str]:
    dist = _dist()
    _, world = group_rank_and_size(group)
    device = comm_device(group)
    mine = _encode_text(message, MESSAGE_BYTES).to(device)
    out = [torch.empty_like(mine) for _ in range(world)]
    _collective(what, dist.all_gather, out, mine, group=group)
    return [_decode_text(t) for t in out]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class WindowExchange:
    """The one collective of a PMWD step: every process contributes the predictions of its share of the step's
    windows plus a status flag, and gets back all the step's predictions in window order.

    Args:
        group: the process group.
        window_shape: ``(C, N, H, W)`` of one window's prediction.
        device: where the gathered predictions are returned (the sampler's device).
    """

    def __init__(self, group, window_shape: Sequence[int], device: torch.device | str):
        self.group = group
        self.rank, self.world = group_rank_and_size(group)
        self.window_shape = tuple(int(s) for s in window_shape)
        self.window_numel = 1
        for s in self.window_shape:
            self.window_numel *= s
        self.device = torch.device(device)
        self.comm = comm_device(group)

    def exchange(self, sizes: Sequence[int], mine: torch.Tensor | None, failure: BaseException | None,
                 where: str) -> torch.Tensor:
        """All predictions ``[sum(sizes), C, N, H, W]`` float32 of a step, process 0's first.

        ``sizes``: how many windows each process evaluated this step (the same list on every process).
        ``mine``: this process's predictions ``[sizes[rank], C, N, H, W]``, or None with ``failure`` set when it
        failed (or when it has no window). If any process failed, every process raises: the failed one its own
        exception, the others a :class:`DistributedError` naming it.
        """
        dist = _dist()
        sizes = [int(k) for k in sizes]
        if len(sizes) != self.world:
            raise DistributedError(f"{len(sizes)} window counts for {self.world} processes at {where}.")
        slots = max(sizes)
        buffer = torch.zeros(1 + slots * self.window_numel, dtype=torch.float32, device=self.comm)
        if failure is not None:
            buffer[0] = 1.0
        elif mine is not None and mine.shape[0]:
            if tuple(mine.shape) != (sizes[self.rank], *self.window_shape):
                raise DistributedError(
                    f"process {self.rank} has predictions {tuple(mine.shape)} at {where}, expected "
                    f"{(sizes[self.rank], *self.window_shape)}."
                )
            buffer[1:1 + mine.numel()] = mine.detach().to(self.comm, torch.float32).flatten()
        gathered = [torch.empty_like(buffer) for _ in range(self.world)]
        _collective(where, dist.all_gather, gathered, buffer, group=self.group)
        failed = [r for r, b in enumerate(gathered) if float(b[0]) != 0.0]
        if failed:
            messages = _gather_messages(self.group, _describe(failure) if failure is not None else "",
                                        f"{where} (reporting a failure)")
            if failure is not None:
                raise failure
            first = failed[0]
            raise DistributedError(
                f"process {first} of {self.world} failed at {where}: {messages[first]}"
                + (f" (processes {', '.join(map(str, failed))} failed)" if len(failed) > 1 else "")
            )
        parts = [b[1:1 + n * self.window_numel].view(n, *self.window_shape) for b, n in zip(gathered, sizes)]
        return torch.cat(parts).to(self.device)


def _fingerprint(parts: Sequence) -> int:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu", torch.float32).contiguous()
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.numpy().tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"|")
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def check_same_run(group, parts: Sequence, what: str) -> None:
    """Raise a :class:`DistributedError` on every process unless all processes pass equal ``parts`` (tensors and
    plain values: the noise, the schedule, the window plan). Also the first rendezvous of a run."""
    dist = _dist()
    rank, world = group_rank_and_size(group)
    if world == 1:
        return
    mine = torch.tensor([_fingerprint(parts)], dtype=torch.int64, device=comm_device(group))
    out = [torch.empty_like(mine) for _ in range(world)]
    _collective(f"the start of {what}", dist.all_gather, out, mine, group=group)
    values = [int(t.item()) for t in out]
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise DistributedError(
            f"the {world} processes disagree about {what} (process {differ[0]} has different noise, schedule or "
            f"windows than process 0); start every process with the same arguments and seed."
        )


def agree_on_min(group, value: int) -> int:
    """The smallest of the processes' ``value`` on every process (e.g. the window batch that fits every device's
    free memory, so that all processes cut the steps into the same chunks)."""
    dist = _dist()
    _, world = group_rank_and_size(group)
    if world == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=comm_device(group))
    _collective("agreeing on the window batch", dist.all_reduce, t, op=dist.ReduceOp.MIN, group=group)
    return int(t.item())


def broadcast_tensors(group, tensors: Sequence[torch.Tensor] | None, *, max_tensors: int = 8,
                      device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Group rank 0's ``tensors`` on every process (float32, on ``device``); other ranks pass None.

    Used for the caption embeddings: encoded once on rank 0, so the other processes need no text encoder and all
    use the same bits. Float32 on the wire is lossless for bf16/fp16/fp32 embeddings.
    """
    dist = _dist()
    rank, world = group_rank_and_size(group)
    if world == 1:
        return [t.float().to(device) for t in tensors or []]
    comm, src = comm_device(group), _global_rank(group, 0)
    header = torch.zeros(1 + max_tensors * 5, dtype=torch.int64)  # count, then (ndim, 4 dims) per tensor
    if rank == 0:
        if tensors is None or len(tensors) > max_tensors or any(t.ndim > 4 for t in tensors):
            raise DistributedError(f"broadcast_tensors takes up to {max_tensors} tensors of at most 4 dims.")
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            header[1 + 5 * i] = t.ndim
            header[2 + 5 * i:2 + 5 * i + t.ndim] = torch.tensor(t.shape)
    header = header.to(comm)
    _collective("the caption broadcast", dist.broadcast, header, src, group=group)
    header = header.cpu()
    out = []
    for i in range(int(header[0])):
        ndim = int(header[1 + 5 * i])
        shape = [int(s) for s in header[2 + 5 * i:2 + 5 * i + ndim]]
        t = tensors[i].detach().to(comm, torch.float32).contiguous() if rank == 0 else torch.empty(
            shape, dtype=torch.float32, device=comm)
        _collective("the caption broadcast", dist.broadcast, t, src, group=group)
        out.append(t.to(device))
    return out


def broadcast_text(group, text: str | None) -> str:
    """Group rank 0's ``text`` on every process (e.g. a timeline made by a remote LLM, asked once)."""
    dist = _dist()
    rank, world = group_rank_and_size(group)
    if world == 1:
        return text or ""
    comm, src = comm_device(group), _global_rank(group, 0)
    data = (text or "").encode("utf-8") if rank == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=comm)
    _collective("sharing the timeline", dist.broadcast, size, src, group=group)
    payload = _encode_text(text or "", int(size.item())) if rank == 0 else torch.zeros(int(size.item()),
                                                                                       dtype=torch.uint8)
    payload = payload.to(comm)
    _collective("sharing the timeline", dist.broadcast, payload, src, group=group)
    return _decode_text(payload)


def init_from_environment(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or return ``(None, device)`` when there is one process.

    NCCL when the processes run on CUDA (each on ``cuda:LOCAL_RANK``), gloo otherwise. ``timeout_s`` bounds every
    collective: a process that dies or hangs stops the others within it. Returns ``(group, device)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, device
    dist = _dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if device not in ("auto", "cuda"):
            raise DistributedError(
                f"--device {device} names one GPU, but each of the {world} processes uses its own "
                f"(cuda:LOCAL_RANK); use --device cuda or auto with torchrun."
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.group.WORLD, device
