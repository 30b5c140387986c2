import pytest

from lorafleet import export


def test_fp16_export_without_cuda_says_which_setting_needs_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/gpu exports fp16 for real")
    with pytest.raises(RuntimeError, match=r"export\.dtype: fp16 needs a CUDA GPU"):
        export.to_onnx(tmp_path / "merged", tmp_path / "onnx", dtype="fp16")
    assert not (tmp_path / "onnx").exists()
