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
    decayed = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    rest = [p for p in net.parameters() if all(p is not d for d in decayed)]
    groups = [{"params": decayed, "weight_decay": 2 * l2}, {"params": rest, "weight_decay": 0.0}]
    return net, _optimizer(groups, opt), nn.CrossEntropyLoss()


BUILDERS = {"mlp": mlp_bn, "small_cnn": small_cnn, "cifar_cnn": cifar_cnn}


def step_function(name: str, opt, x, y, device: str = "cpu", compile: bool = False):
    """A function running one eager training step of model `name` on (x, y) NumPy arrays
    copied once to `device`: zero the gradients, forward, loss (and the accuracy metric
    dslc also computes), backward, optimizer step; with `compile`, the module is
    torch.compile'd (the first call compiles it, forward and backward)."""
    torch.manual_seed(0)
    net, optimizer, loss_fn = BUILDERS[name](opt)
    net.to(device).train()  # moves the parameters in place: the optimizer keeps them
    if compile:
        net = torch.compile(net)
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = net(tx)
        loss = loss_fn(logits, ty)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            (logits.argmax(1) == ty).float().mean()
        return loss.item()
    return step
