"""devices: precision resolution (auto, fp32, bf16) and autocast dtypes."""

from __future__ import annotations

import pytest
import torch

from featurestore import devices
from featurestore.config import Precision
from featurestore.devices import autocast_dtype, precision_name, resolve_precision
from featurestore.errors import XrayError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_a_cpu_that_computes_it(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: native)
    assert resolve_precision("auto", CPU, cuda_auto="fp16") == ("bf16" if native else "fp32")
    assert resolve_precision(Precision.auto, CUDA, cuda_auto="fp16") == "fp16"  # as before
    for asked in ("fp32", "bf16"):  # an explicit choice is kept everywhere
        assert resolve_precision(asked, CPU, cuda_auto="fp16") == asked
        assert resolve_precision(Precision(asked), CUDA, cuda_auto="fp16") == asked


@pytest.mark.parametrize("native", [True, False])
def test_the_default_is_auto_on_cpu_and_unchanged_on_cuda(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: native)
    assert resolve_precision(None, CPU, cuda_auto="fp16") == ("bf16" if native else "fp32")
    assert resolve_precision(None, CUDA, cuda_auto="fp16") == "fp16"
    assert devices.amp_dtype(True, CPU) is (torch.bfloat16 if native else None)


def test_unknown_precision_is_a_user_error() -> None:
    with pytest.raises(XrayError, match="--precision must be one of auto, fp32, bf16"):
        resolve_precision("fp8", CPU, cuda_auto="fp16")


def test_training_autocast_follows_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert devices.amp_dtype(True, CPU, "auto") is torch.bfloat16
    assert devices.amp_dtype(True, CPU, "fp32") is None
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    assert devices.amp_dtype(True, CPU, "auto") is None
    assert devices.amp_dtype(False, CPU, "bf16") is torch.bfloat16
    for name in ("fp32", "bf16", "fp16"):
        assert precision_name(autocast_dtype(name)) == name


def test_cpu_flags_are_read_without_error() -> None:
    assert devices.cpu_computes_bf16() in (True, False)
