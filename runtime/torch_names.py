"""Where torchvision's modules are in the models of models/: one table per architecture.

A table maps a torchvision module (`features.0`, `layer1.0.conv1`, `classifier.6`) to the
dslc layer that holds the same parameters (`conv1.conv_relu.conv2d`, `layer1.basic.conv1`,
`fc8`). Only modules whose names differ need an entry: any other module is looked for
under its own name, which is how a model written with torchvision's names as layer
labels (models/resnet18.net) needs so few. Parameter names inside a module follow each
op's convention (dslc.runtime.torch_weights.TORCH_SLOTS), not these tables.

The table is chosen by the model's name; `torch_weights(path, mapping="map.json")` adds
or overrides entries. models/alexnet.net is the lectures' AlexNet (96 channels in the first
layer, 227x227 images), so torchvision's one-tower variant (64 channels, 224x224) maps by
name but not by shape: a model written with its sizes loads it.

    TABLES["vgg16"]["features.28"]      # 'stage_4.conv2d_2'
"""
from __future__ import annotations

ALEXNET = {
    "features.0": "conv1.conv_relu.conv2d", "features.3": "conv2.conv_relu.conv2d",
    "features.6": "conv3.conv_relu.conv2d", "features.8": "conv4.conv_relu.conv2d",
    "features.10": "conv5.conv_relu.conv2d",
    # classifier: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
    "classifier.1": "fc6.fc_dropout.linear", "classifier.4": "fc7.fc_dropout.linear", "classifier.6": "fc8",
}


def _vgg(stages: tuple[int, ...]) -> dict[str, str]:
    """torchvision's VGG numbers the modules of `features` in order: each 3x3 convolution is
    followed by a ReLU, each stage ends with a max-pool. dslc names the k-th convolution of the
    s-th `stage` block `stage_s.conv2d_k` (the first of each without its _0)."""
    table, index = {}, 0
    for s, convs in enumerate(stages):
        for k in range(convs):
            table[f"features.{index}"] = f"stage{f'_{s}' if s else ''}.conv2d{f'_{k}' if k else ''}"
            index += 2  # Conv2d, ReLU
        index += 1  # MaxPool2d
    # classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    return table | {"classifier.0": "fc6.fc_dropout.linear", "classifier.3": "fc7.fc_dropout.linear",
                    "classifier.6": "fc8"}


def _resnet(blocks: tuple[int, ...]) -> dict[str, str]:
    """torchvision's `layer{i}.{j}` is the j-th block of stage i. In the .net file each stage is
    `basic_down` (stride 2 and a projection shortcut; not in stage 1) followed by `basic` blocks,
    which dslc numbers per block name: basic, basic_1, ... Inside a block the labels are
    torchvision's (conv1, bn1, conv2, bn2); its `downsample` is a Sequential of conv and batchnorm."""
    table: dict[str, str] = {}
    for i, count in enumerate(blocks, start=1):
        seen: dict[str, int] = {}
        for j in range(count):
            base = "basic_down" if i > 1 and j == 0 else "basic"
            block = f"layer{i}.{base}" + (f"_{seen[base]}" if seen.get(base) else "")
            seen[base] = seen.get(base, 0) + 1
            table |= {f"layer{i}.{j}.{m}": f"{block}.{m}" for m in ("conv1", "bn1", "conv2", "bn2")}
            if base == "basic_down":
                table |= {f"layer{i}.{j}.downsample.0": f"{block}.downsample.conv2d",
                          f"layer{i}.{j}.downsample.1": f"{block}.downsample.batchnorm"}
    return table


TABLES: dict[str, dict[str, str]] = {
    "alexnet": ALEXNET,
    "vgg16": _vgg((2, 2, 3, 3, 3)),
    "resnet18": _resnet((2, 2, 2, 2)),
}
