"""Which faiss build a run used, for its summary or report.

`faiss-cpu` and `faiss-gpu` install the same `faiss` module, and what a search does (and how
fast) can depend on which one is there and whether it sees a GPU, so every summary that rests
on a faiss search records it.
"""

from __future__ import annotations

from types import ModuleType

from core.errors import MissingExtra

INSTALL_HINT = ("faiss is not installed: pip install 'dcgan-pipeline[cpu]' "
                "(or 'dcgan-pipeline[gpu]' on a CUDA machine, never both)")


def import_faiss() -> ModuleType:
    """The faiss module, whichever build is installed; the project declares the CPU and GPU
    builds as alternative extras (they install the same module), so a plain install has none
    and gets a one-line hint instead of a traceback."""
    try:
        import faiss
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return faiss


def faiss_build() -> dict:
    """{"faiss_version", "faiss_build": "gpu" | "cpu", "faiss_gpus": GPUs faiss sees}."""
    faiss = import_faiss()

    gpu_build = hasattr(faiss, "StandardGpuResources")
    return {"faiss_version": faiss.__version__, "faiss_build": "gpu" if gpu_build else "cpu",
            "faiss_gpus": faiss.get_num_gpus() if gpu_build else 0}
