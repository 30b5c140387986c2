import pytest

from lorafleet import evaluate, export


def test_fp16_export_without_cuda_says_which_setting_needs_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/gpu exports fp16 for real")
    with pytest.raises(RuntimeError, match=r"export\.dtype: fp16 needs a CUDA GPU"):
        export.to_onnx(tmp_path / "merged", tmp_path / "onnx", dtype="fp16")
    assert not (tmp_path / "onnx").exists()


def test_greedy_agreement_is_position_by_position_over_the_longer_answer():
    assert export.greedy_agreement([[5, 6, 2], [7, 2]], [[5, 6, 2], [7, 2]]) == (1.0, 5)
    # the second answers differ at their first position; the third runs on where the other ended (4 positions)
    assert export.greedy_agreement([[5, 6, 2], [7, 2], [4, 2]], [[5, 6, 2], [8, 2], [4, 9, 9, 2]]) == (5 / 9, 9)
    assert export.greedy_agreement([], []) == (0.0, 0)


def test_parity_needs_an_answer_from_each_model_for_every_prompt():
    with pytest.raises(ValueError, match="1 prompts, but 1 and 0 answers"):
        export.check_parity(None, None, None, ["a prompt"], [[1, 2]], [])


@pytest.mark.parametrize(("available", "cuda", "expected"), [
    (["CUDAExecutionProvider", "CPUExecutionProvider"], True, "CUDAExecutionProvider"),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], False, "CPUExecutionProvider"),  # a task given no GPU
    (["AzureExecutionProvider", "CPUExecutionProvider"], True, "CPUExecutionProvider"),  # the CPU build on a GPU host
])
def test_onnx_runs_on_cuda_where_onnxruntime_offers_it_and_torch_sees_a_gpu(monkeypatch, available, cuda, expected):
    import onnxruntime
    import torch

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert evaluate.onnx_provider() == expected
