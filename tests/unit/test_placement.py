"""Device placement follows what Ray assigned; outside Ray and without CUDA it is the CPU."""

from __future__ import annotations

import pytest
import torch

from deployments.common import resolve_dtype, resolve_placement


def test_without_ray_and_cuda_the_device_is_cpu() -> None:
    placement = resolve_placement("auto")
    assert placement.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert placement.gpu_ids == [] and placement.node_id is None
    assert placement.torch_threads == torch.get_num_threads()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_placement("cuda")


def test_half_precision_only_on_cuda() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cuda") == torch.float16
