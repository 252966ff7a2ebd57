"""Which faiss build a run used, for its summary or report.

`faiss-cpu` and `faiss-gpu` install the same `faiss` module, and what a search does (and how
fast) can depend on which one is there and whether it sees a GPU, so every summary that rests
on a faiss search records it.
"""

from __future__ import annotations


def faiss_build() -> dict:
    """{"faiss_version", "faiss_build": "gpu" | "cpu", "faiss_gpus": GPUs faiss sees}."""
    import faiss

    gpu_build = hasattr(faiss, "StandardGpuResources")
    return {"faiss_version": faiss.__version__, "faiss_build": "gpu" if gpu_build else "cpu",
            "faiss_gpus": faiss.get_num_gpus() if gpu_build else 0}
