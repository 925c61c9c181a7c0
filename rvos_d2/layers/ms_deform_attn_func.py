"""Multi-scale deformable attention as a function: input checks, the compiled op and a reference.

`ms_deform_attn` runs the compiled `rvos_d2._C` kernels (C++ on CPU, CUDA on GPUs) through an
autograd Function, and falls back to `ms_deform_attn_reference` (built on `grid_sample`) where the
extension is missing, fails to load, or has no kernel for the inputs' device; the first fallback
for each cause logs one warning naming it and the command that rebuilds the extension.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import weakref
from collections.abc import Iterator
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

REBUILD_COMMAND = (
    "rebuild it inside the project's virtual environment with "
    "`pip install --no-build-isolation -e .` (or `make setup`)"
)


def describe_load_error(error: BaseException) -> str:
    """One sentence on why `rvos_d2._C` did not load, with the likely cause where it is known."""
    if isinstance(error, ModuleNotFoundError) and error.name == "rvos_d2._C":
        return "rvos_d2._C is not compiled (the package was installed without building it)"
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"rvos_d2._C failed to load ({type(error).__name__}: {message})"
    if "undefined symbol" in message:
        return text + ": it was built against another PyTorch version"
    if re.search(r"lib(cudart|cuda|c10_cuda|torch_cuda|nvrtc)[\w.-]*\.so", message):
        return text + ": it was built for another CUDA version or without one"
    return text


def _load_extension() -> tuple[ModuleType | None, str | None]:
    """Imports `rvos_d2._C`; on any failure returns (None, why) so the op can fall back."""
    try:
        return importlib.import_module("rvos_d2._C"), None
    except Exception as error:  # a broken binary may raise more than ImportError
        return None, describe_load_error(error)


_C, _LOAD_ERROR = _load_extension()
_WARNED: set[str] = set()
# device index -> why the compiled CUDA kernels cannot run there (None: they can)
_CUDA_PROBLEMS: dict[int, str | None] = {}
# (weakref spatial_shapes, weakref level_start_index, (versions, S)) of the last verified layout
_LAST_VALID_LAYOUT = None
_REDUCED_PRECISION = (torch.float16, torch.bfloat16)
_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
_FORCE_PYTORCH_PATH = False


def compiled_op_available() -> bool:
    """True when the compiled extension `rvos_d2._C` was imported."""
    return _C is not None


@contextlib.contextmanager
def pytorch_path() -> Iterator[None]:
    """Runs `ms_deform_attn` on the pure-PyTorch path inside the block (benchmarks, debugging)."""
    global _FORCE_PYTORCH_PATH
    previous, _FORCE_PYTORCH_PATH = _FORCE_PYTORCH_PATH, True
    try:
        yield
    finally:
        _FORCE_PYTORCH_PATH = previous


def compiled_op_status() -> dict:
    """What the compiled extension is: loaded or why not, file, CUDA kernels and architectures."""
    if _C is None:
        return {"loaded": False, "error": _LOAD_ERROR}
    archs = _C.cuda_arch_list()
    return {
        "loaded": True,
        "file": getattr(_C, "__file__", None),
        "cuda": bool(_C.has_cuda()),
        "cuda_arch_list": archs.split("_") if archs else [],
    }


def cuda_kernel_problem(device: torch.device | int) -> str | None:
    """Why the compiled CUDA kernels cannot run on `device`, or None when they can (cached)."""
    index = torch.device("cuda", device).index if isinstance(device, int) else device.index
    index = torch.cuda.current_device() if index is None else index
    if index not in _CUDA_PROBLEMS:
        _CUDA_PROBLEMS[index] = _probe_cuda_kernels(index)
    return _CUDA_PROBLEMS[index]


def _probe_cuda_kernels(index: int) -> str | None:
    """Asks the extension whether it holds a kernel image GPU `index` can run; why not, or None."""
    if _C is None:
        return _LOAD_ERROR
    if not _C.has_cuda():
        return (
            "rvos_d2._C was built without CUDA kernels (no CUDA toolkit was found when it was "
            "compiled) and the inputs are on a GPU"
        )
    error, _, _ = _C.cuda_kernel_image(index)
    if not error:
        return None
    major, minor = torch.cuda.get_device_capability(index)
    archs = _C.cuda_arch_list().replace("_", ";") or "unknown"
    return (
        f"rvos_d2._C has no CUDA kernel for {torch.cuda.get_device_name(index)} (compute "
        f"capability {major}.{minor}; built for TORCH_CUDA_ARCH_LIST={archs}): {error}; on this "
        "machine the build targets the visible GPU, or set TORCH_CUDA_ARCH_LIST"
    )


def _warn_once(cause: str) -> None:
    """Logs the fallback to the PyTorch path once per cause."""
    if cause in _WARNED:
        return
    _WARNED.add(cause)
    logger.warning(
        "%s. Multi-scale deformable attention runs on the slower pure-PyTorch path; %s.",
        cause,
        REBUILD_COMMAND,
    )


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the op accumulates in: float32 for 16-bit values, the value dtype otherwise."""
    return torch.float32 if dtype in _REDUCED_PRECISION else dtype


def check_ms_deform_attn_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    check_values: bool = True,
) -> None:
    """Raises ValueError naming the argument when shapes, dtypes or devices do not fit together.

    `check_values` also verifies that spatial_shapes / level_start_index tile S. That needs a host
    copy of both; it is skipped when the same, unmodified index tensors were verified last time
    (every layer of a transformer reuses them), so a forward pass synchronises once.
    """
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be N x S x M x D, got shape {_shape(value)}")
    n, s, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            "ms_deform_attn: spatial_shapes must be L x 2 (h, w), got shape "
            f"{_shape(spatial_shapes)}"
        )
    num_levels = spatial_shapes.shape[0]
    if level_start_index.shape != (num_levels,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must have shape ({num_levels},) to match "
            f"spatial_shapes, got {_shape(level_start_index)}"
        )
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be N x Lq x M x L x P x 2, got shape "
            f"{_shape(sampling_locations)}"
        )
    nq, lq, mq, lq_levels, p, _ = sampling_locations.shape
    if (nq, mq, lq_levels) != (n, m, num_levels):
        raise ValueError(
            f"ms_deform_attn: sampling_locations shape {_shape(sampling_locations)} does not match "
            f"value (N={n}, M={m}) and spatial_shapes (L={num_levels})"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"ms_deform_attn: attention_weights must have shape {_shape(sampling_locations)[:-1]} "
            f"(sampling_locations without its last axis), got {_shape(attention_weights)}"
        )
    indices = {"spatial_shapes": spatial_shapes, "level_start_index": level_start_index}
    sampling = {"sampling_locations": sampling_locations, "attention_weights": attention_weights}
    for name, tensor in indices.items():
        if tensor.dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64, got {tensor.dtype}")
    for name, tensor in {"value": value, **sampling}.items():
        if not tensor.is_floating_point():
            raise ValueError(f"ms_deform_attn: {name} must be floating point, got {tensor.dtype}")
    allowed = {value.dtype, accumulation_dtype(value.dtype)}
    for name, tensor in sampling.items():
        if tensor.dtype not in allowed:
            raise ValueError(
                f"ms_deform_attn: {name} has dtype {tensor.dtype} but value has {value.dtype} "
                f"(allowed: {sorted(str(d) for d in allowed)})"
            )
    for name, tensor in {**indices, **sampling}.items():
        if tensor.device != value.device:
            raise ValueError(
                f"ms_deform_attn: {name} is on {tensor.device} but value is on {value.device}"
            )
    if num_levels == 0:
        raise ValueError("ms_deform_attn: spatial_shapes must hold at least one level")
    if check_values:
        _check_level_layout(spatial_shapes, level_start_index, s)


def _check_level_layout(spatial_shapes: Tensor, level_start_index: Tensor, s: int) -> None:
    """Checks that the levels tile S exactly (one host copy of both small index tensors)."""
    global _LAST_VALID_LAYOUT
    key = (spatial_shapes._version, level_start_index._version, s)
    if _LAST_VALID_LAYOUT is not None:
        shapes_ref, starts_ref, last_key = _LAST_VALID_LAYOUT
        if shapes_ref() is spatial_shapes and starts_ref() is level_start_index and last_key == key:
            return
    num_levels = spatial_shapes.shape[0]
    both = torch.cat([spatial_shapes.detach().reshape(-1), level_start_index.detach()]).cpu()
    shapes, starts = both[: 2 * num_levels].view(num_levels, 2), both[2 * num_levels :]
    if bool((shapes <= 0).any()):
        raise ValueError(f"ms_deform_attn: spatial_shapes must be positive, got {shapes.tolist()}")
    sizes = shapes.prod(1)
    if int(sizes.sum()) != s:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes {shapes.tolist()} cover {int(sizes.sum())} "
            f"positions but value has S={s}"
        )
    expected = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    if not torch.equal(starts, expected):
        raise ValueError(
            f"ms_deform_attn: level_start_index {starts.tolist()} does not match "
            f"spatial_shapes (expected {expected.tolist()})"
        )
    _LAST_VALID_LAYOUT = (weakref.ref(spatial_shapes), weakref.ref(level_start_index), key)


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch multi-scale deformable attention (bilinear `grid_sample`, zero padding).

    Same contract as `ms_deform_attn`; differentiable through autograd. 16-bit inputs are computed
    in float32 and the result is cast back to `value.dtype`.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    compute_dtype = accumulation_dtype(value.dtype)
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False this maps 0 and 1 to the
    # outer edges of the border pixels, the convention of the compiled kernels.
    grids = 2 * sampling_locations.to(compute_dtype) - 1
    sampled = []
    for level, value_level in enumerate(value.to(compute_dtype).split(sizes, dim=1)):
        h, w = (int(x) for x in spatial_shapes[level].tolist())
        # (N, H*W, M, D) -> (N*M, D, H, W): one image per (batch, head).
        image = value_level.permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled.append(
            F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*M, D, Lq, L, P) weighted by (N*M, 1, Lq, L, P), summed over levels and points.
    stacked = torch.stack(sampled, dim=3)
    weights = (
        attention_weights.to(compute_dtype).transpose(1, 2).reshape(n * m, 1, lq, num_levels, p)
    )
    output = (stacked * weights).sum(dim=(3, 4))  # (N*M, D, Lq)
    output = output.view(n, m * d, lq).transpose(1, 2)
    return output.to(value.dtype).contiguous()


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the compiled forward / backward kernels."""

    @staticmethod
    def forward(
        ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        acc = accumulation_dtype(value.dtype)
        ctx.loc_dtype = sampling_locations.dtype
        ctx.attn_dtype = attention_weights.dtype
        sampling_locations = sampling_locations.to(acc).contiguous()
        attention_weights = attention_weights.to(acc).contiguous()
        value = value.contiguous()
        output = _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        ctx.save_for_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
            ctx.saved_tensors
        )
        grad_value, grad_locations, grad_weights = _C.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
        )
        return (
            grad_value,
            None,
            None,
            grad_locations.to(ctx.loc_dtype),
            grad_weights.to(ctx.attn_dtype),
        )


def _kernel_dtype(value: Tensor) -> torch.dtype | None:
    """The dtype the compiled op runs `value` in, or None for the PyTorch path (warned once).

    CUDA kernels take every floating dtype (16-bit ones accumulate in float32); the CPU kernels
    take float32 / float64, so 16-bit CPU values run in float32 and are cast back.
    """
    if _FORCE_PYTORCH_PATH:
        return None
    if _C is None:
        _warn_once(_LOAD_ERROR)
        return None
    if value.is_cuda:
        problem = cuda_kernel_problem(value.device)
        if problem is not None:
            _warn_once(problem)
            return None
        return value.dtype
    if value.device.type != "cpu":
        return None
    return value.dtype if value.dtype in _CPU_KERNEL_DTYPES else torch.float32


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention (Deformable DETR), dispatched by device.

    Runs the compiled kernels in the value's dtype where they cover it (float16 / bfloat16 on
    CUDA, so autocast keeps 16-bit values), else the pure-PyTorch path.

    Args:
        value: N x S x M x D, the flattened levels of every head.
        spatial_shapes: L x 2 int64 (h, w) of each level; S = sum of h * w.
        level_start_index: L int64, offset of each level in S.
        sampling_locations: N x Lq x M x L x P x 2, normalised (x, y) in [0, 1] per level; points
            outside the map read zeros (bilinear, align_corners=False).
        attention_weights: N x Lq x M x L x P.
    Returns:
        N x Lq x (M * D), in `value.dtype`.
    """
    check_ms_deform_attn_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    kernel_dtype = _kernel_dtype(value)
    if kernel_dtype is not None:
        output = _MSDeformAttnFunction.apply(
            value.to(kernel_dtype),
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
        )
        return output.to(value.dtype)
    return ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)
