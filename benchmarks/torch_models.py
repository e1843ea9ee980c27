"""The benchmark models of benchmarks/train_step.py written in PyTorch, layer for layer.

Each builder returns `(module, optimizer, loss_fn)` for the same architecture as the
`.net` file (same layer sizes, bias=false where the model has it, batchnorm momentum
and epsilon as dslc's defaults), so one eager training step does the same arithmetic
a dslc step does. Imported only when torch is installed; dslc itself never uses torch.
"""
from __future__ import annotations

import torch
from torch import nn


def _optimizer(params, opt):
    """The torch optimizer for a dslc `Optimizer` (adam, or sgd with (nesterov) momentum).

    dslc's `l2(weights)` term in a loss is PyTorch's weight_decay: 2 * coefficient,
    applied to conv and linear weights only, as a person writing it in PyTorch would."""
    if opt.kind == "adam":
        return torch.optim.Adam(params, lr=opt.lr)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)


def mlp_bn(opt):
    """models/mlp_bn.net: 784-512-256-10, linear(bias=false) -> batchnorm -> relu -> dropout(0.5)."""
    def hidden(i, o):
        return [nn.Linear(i, o, bias=False), nn.BatchNorm1d(o), nn.ReLU(), nn.Dropout(0.5)]
    net = nn.Sequential(*hidden(784, 512), *hidden(512, 256), nn.Linear(256, 10))
    return net, _optimizer(net.parameters(), opt), nn.CrossEntropyLoss()


def _conv_bn_relu(i, o):
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


def small_cnn(opt):
    """models/small_cnn.net: two conv-bn-relu-maxpool stages (32, 64 channels), fc 128, 10 classes."""
    net = nn.Sequential(*_conv_bn_relu(1, 32), nn.MaxPool2d(2), *_conv_bn_relu(32, 64), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    return net, _optimizer(net.parameters(), opt), nn.CrossEntropyLoss()


def cifar_cnn(opt, l2: float = 5e-4):
    """models/cifar_cnn.net: two stages of two conv-bn-relu and a maxpool, fc 256, 10 classes;
    the loss's `l2 * sum w^2` over conv/linear weights is weight decay 2*l2 on those weights."""
    net = nn.Sequential(*_conv_bn_relu(3, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
                        *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4096, 256), nn.ReLU(), nn.Linear(256, 10))
    return net, _optimizer(_decayed_groups(net, 2 * l2), opt), nn.CrossEntropyLoss()


def _decayed_groups(net, weight_decay: float):
    """Parameter groups with weight decay on conv and linear weights only: dslc decays the
    parameters whose role is `weight`, never batchnorm's gamma/beta or biases."""
    decayed = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    rest = [p for p in net.parameters() if all(p is not d for d in decayed)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class _Basic(nn.Module):
    """models/resnet20.net's `basic` / `basic_down` block: two 3x3 conv-bn, an identity
    shortcut, or option A where the block halves the image (every other pixel, the new
    channels zero-padded on both sides of the channel axis)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, (c_out - c_in) // 2

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.stride != 1 or self.pad:
            x = nn.functional.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return torch.relu(x + y)


def resnet20(opt, n: int = 3, width: int = 16):
    """models/resnet20.net: a conv-bn-relu stem, three stages of n basic blocks (16, 32, 64
    channels; stride 2 and option-A shortcuts entering stages 2 and 3), global average
    pooling, a linear layer; SGD's weight decay on conv and linear weights, as dslc's."""
    layers, c = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()], width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for block in range(n):
            layers.append(_Basic(c, c_out, 2 if stage and not block else 1))
            c = c_out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    return net, _optimizer(_decayed_groups(net, opt.weight_decay), opt), nn.CrossEntropyLoss()


def lenet5(opt):
    """models/lenet5.net: conv 6 (5x5, pad 2) -> tanh -> avgpool, conv 16 (5x5) -> tanh ->
    avgpool, fc 120 and 84 with tanh, 10 classes."""
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                        nn.Linear(84, 10))
    return net, _optimizer(net.parameters(), opt), nn.CrossEntropyLoss()


BUILDERS = {"mlp": mlp_bn, "small_cnn": small_cnn, "cifar_cnn": cifar_cnn, "resnet20": resnet20, "lenet5": lenet5}


def step_function(name: str, opt, x, y, device: str = "cpu", compile: bool = False):
    """A function running one training step of model `name` on (x, y) NumPy arrays copied
    once to `device`: zero the gradients, forward, loss (and the accuracy metric dslc also
    computes), backward, optimizer step. With `compile` the whole step, optimizer update
    included, is torch.compile'd (inductor's default mode): what makes PyTorch fastest on a
    CPU, ahead of compiling the module alone (measured here: mlp_bn 51 ms whole step, 86 ms
    module only, 113 ms eager on a loaded machine). Its first call compiles."""
    torch.manual_seed(0)
    net, optimizer, loss_fn = BUILDERS[name](opt)
    net.to(device).train()  # moves the parameters in place: the optimizer keeps them
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def core():
        optimizer.zero_grad(set_to_none=True)
        logits = net(tx)
        loss = loss_fn(logits, ty)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            (logits.argmax(1) == ty).float().mean()
        return loss

    run = torch.compile(core) if compile else core

    def step():
        return run().item()
    return step
