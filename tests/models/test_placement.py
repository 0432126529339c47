"""Device and dtype placement from a profile."""

from __future__ import annotations

import pytest
import torch

from fedbrick_flower.models import resolve_device, resolve_dtype


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    cpu = resolve_device("auto")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    mps = resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    # Execute
    cuda = resolve_device("auto")

    # Assert
    assert (cpu.type, mps.type, str(cuda)) == ("cpu", "mps", "cuda:0")


def test_explicit_cuda_index_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    # Execute
    device = resolve_device("cuda:1")

    # Assert
    assert str(device) == "cuda:1"
    with pytest.raises(ValueError, match="cuda:2"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu"])
def test_unknown_device_is_named_in_the_error(spec: str) -> None:
    with pytest.raises(ValueError, match="device="):
        resolve_device(spec)


def test_dtype_auto_is_fp32_on_cpu_and_half_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)

    # Execute / Assert
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda:0")) is torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="dtype='fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_client_threads_follow_the_override_and_stay_default_outside_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: this test process is no Ray worker; restore torch's thread count afterwards.
    from fedbrick_flower.models.placement import THREADS_ENV, match_threads_to_cpu_share

    default = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    match_threads_to_cpu_share.cache_clear()
    try:
        # Execute
        outside_ray = match_threads_to_cpu_share()
        match_threads_to_cpu_share.cache_clear()
        monkeypatch.setenv(THREADS_ENV, "1")
        overridden = match_threads_to_cpu_share()
        current = torch.get_num_threads()
    finally:
        torch.set_num_threads(default)
        match_threads_to_cpu_share.cache_clear()

    # Assert
    assert outside_ray == default
    assert overridden == current == 1


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # Prepare: two CPUs as /proc/cpuinfo describes them, torch reporting no AMX.
    from fedbrick_flower.models.placement import cpu_autocast_dtype, cpu_computes_bf16

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    zen = tmp_path / "zen"
    zen.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    older = tmp_path / "older"
    older.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")

    # Execute
    found = cpu_computes_bf16(zen), cpu_computes_bf16(older)

    # Assert: and only bf16 on a CPU runs under autocast; fp32 and accelerators keep their weights' dtype.
    assert found == (True, False)
    assert cpu_autocast_dtype(torch.bfloat16, torch.device("cpu")) is torch.bfloat16
    assert cpu_autocast_dtype(torch.float32, torch.device("cpu")) is None
    assert cpu_autocast_dtype(torch.bfloat16, torch.device("cuda:0")) is None
