"""Each CUDA kernel once, on small odd-sized inputs, checked against the CPU result.

Small enough to run under ``compute-sanitizer --tool memcheck`` (benchmarks/gpu_check.sh);
the thorough CUDA checks are the parametrised tests in tests/.
"""
import torch

import clear_native
from clear_native import reference


def main() -> None:
    assert torch.cuda.is_available() and clear_native.build_info()["cuda"], "needs a CUDA build and GPU"
    torch.manual_seed(0)
    dev = "cuda"

    x = torch.randn(3, 7, 13, 9)
    x[0, :, 0, 0] = float("nan")
    x[1, 2:4, 1, 1] = 5.0  # tie
    target = torch.tensor([0, 6, 3])
    got = clear_native.dominance(x.to(dev), target.to(dev))
    want = reference.dominance(x, target)
    for name in ("dominant_class", "dominant_response", "runner_up_class", "target_response"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), equal_nan=True)

    feats = torch.relu(torch.randn(2, 5, 3, 4))
    w, b = torch.randn(11, 5), torch.randn(11)
    for mode, ac in (("bilinear", False), ("bilinear", True), ("nearest", False)):
        got = clear_native.project_dominance(feats.to(dev), w.to(dev), b.to(dev), size=(17, 10),
                                             mode=mode, align_corners=ac)
        want = reference.project_dominance(feats, w, b, size=(17, 10), mode=mode, align_corners=ac)
        torch.testing.assert_close(got.dominant_response.cpu(), want.dominant_response)

    d = clear_native.dominance(torch.randn(2, 10, 15, 11, device=dev))
    img = torch.rand(2, 3, 15, 11, device=dev)
    got = clear_native.render(d, img)
    want = clear_native.render(d.to("cpu"), img.cpu())
    torch.testing.assert_close(got.cpu(), want, atol=1, rtol=0)
    torch.cuda.synchronize()
    print("gpu smoke ok")


if __name__ == "__main__":
    main()
