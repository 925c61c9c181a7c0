"""`python -m rvos_d2.collect_env`: detectron2's environment report plus what rvos_d2 needs.

Adds the compiled op's status (loaded or why not, CUDA kernels and their architectures, whether
they run on each visible GPU), the text encoder found and the datasets found under
$DETECTRON2_DATASETS, so a bug report holds everything needed to reproduce a setup.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tabulate import tabulate

import rvos_d2
from rvos_d2.data.datasets.registration import datasets_root

# Registered-name prefix -> folder under $DETECTRON2_DATASETS that its loader reads.
DATASET_FOLDERS = (
    ("a2d_sentences_", "a2d_sentences"),
    ("jhmdb_sentences", "jhmdb_sentences"),
    ("mevis_", "mevis"),
    ("ref_davis_", "ref-davis"),
    ("ref_ytvos_", "ref-youtube-vos"),
    ("refcoco", "coco"),
    ("rvos_synth", "rvos_synth"),
    ("ytvos2019_vos_", "ytvos2019"),
    ("davis17_vos_", "DAVIS"),
)


def detectron2_env_info() -> str:
    """detectron2's own report, or the error that stopped it (the rest is still worth printing)."""
    try:
        from detectron2.utils.collect_env import collect_env_info

        return collect_env_info()
    except Exception as error:  # a broken install is exactly what this report is for
        return f"detectron2 collect_env failed: {type(error).__name__}: {error}"


def op_rows() -> list[tuple[str, str]]:
    """rvos_d2._C: loaded or why not, CUDA kernels and architectures, per-GPU usability."""
    from rvos_d2.layers.ms_deform_attn_func import compiled_op_status, cuda_kernel_problem

    status = compiled_op_status()
    if not status["loaded"]:
        return [("rvos_d2._C", f"not loaded: {status['error']}")]
    rows = [("rvos_d2._C", f"loaded @{status['file']}")]
    if status["cuda"]:
        rows.append(("rvos_d2._C CUDA", "yes, for " + ", ".join(status["cuda_arch_list"])))
    else:
        rows.append(("rvos_d2._C CUDA", "no (built without a CUDA toolkit: CPU kernels only)"))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            problem = cuda_kernel_problem(index)
            rows.append((f"rvos_d2._C on GPU {index}", problem or "kernels run"))
    return rows


def text_encoder_rows() -> list[tuple[str, str]]:
    """The offline MiniLM text encoder (the default MODEL.TEXT_ENCODER.NAME) and transformers."""
    from rvos_d2.modeling.text_encoder import MINILM_NAME, resolve_model_path

    try:
        path, _ = resolve_model_path(MINILM_NAME)
        found = f"@{path}"
    except (ImportError, FileNotFoundError) as error:
        found = f"not found: {error}"
    try:
        import transformers

        version = f"{transformers.__version__} @{Path(transformers.__file__).parent}"
    except ImportError as error:
        version = f"not installed: {error}"
    return [(f"text encoder '{MINILM_NAME}'", found), ("transformers", version)]


def registered_dataset_roots() -> dict[str, Path]:
    """Every rvos_d2 dataset name with the folder its loader reads."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = datasets_root()
    roots = {}
    for name in DatasetCatalog.list():
        folder = next((f for prefix, f in DATASET_FOLDERS if name.startswith(prefix)), None)
        if folder is None:
            continue
        configured = MetadataCatalog.get(name).get("dataset_root", None)
        roots[name] = Path(configured) if configured else root / folder
    return roots


def dataset_rows() -> list[tuple[str, str]]:
    """$DETECTRON2_DATASETS and the registered names whose folder exists there."""
    root = datasets_root()
    setting = os.environ.get("DETECTRON2_DATASETS", "<not set: ./datasets>")
    rows = [("DETECTRON2_DATASETS", f"{setting} ({'exists' if root.is_dir() else 'missing'})")]
    roots = registered_dataset_roots()
    found = [name for name, path in roots.items() if path.is_dir()]
    missing = sorted({str(path) for name, path in roots.items() if name not in found})
    rows.append(("datasets found", ", ".join(found) if found else "none"))
    rows.append((f"datasets missing ({len(roots) - len(found)} names)", ", ".join(missing)))
    return rows


def collect_env_info() -> str:
    """detectron2's report followed by the rvos_d2 table."""
    rows = [("rvos_d2", f"{rvos_d2.__version__} @{Path(rvos_d2.__file__).parent}")]
    rows += op_rows() + text_encoder_rows() + dataset_rows()
    return detectron2_env_info() + "\n" + tabulate(rows, maxcolwidths=[None, 90]) + "\n"


def main() -> None:
    print(collect_env_info())


if __name__ == "__main__":
    main()
