# Does this torch's float32 convolution backward depend on the batch? (Debian 13's oneDNN 3.7.2
# build does on AVX-512 machines: a sample's input gradient alone and in a batch of 2 differ.)
import sys, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                          torch.nn.Conv2d(8, 16, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                          torch.nn.Linear(16, 4)).eval()
x = torch.randn(2, 3, 16, 16)
def grad(xx):
    xx = xx.clone().requires_grad_(True)
    net(xx)[:, 1].sum().backward()
    return xx.grad
def gap():
    a, c = grad(x), grad(x[1:2])
    return ((a[1:2] - c).abs().max() / a.abs().max()).item()
on = gap()
torch.backends.mkldnn.enabled = False
off = gap()
print(f"onednn check: float32 input gradient, sample alone vs in a batch: {on:.2e} with oneDNN, {off:.2e} without")
# exit 3: the defect (any other failure of this script is an error of its own)
sys.exit(3 if on > 1e-4 and off <= 1e-4 else 0)
