"""What a trained classifier learned, as pictures and numbers: the `dslc explain` methods.

One module per family, all over one `Subject` (subject.py: a model with a run's parameters,
compiled, seen from its pixels):
    gradients.py     saliency maps and guided backpropagation
    adversarial.py   FGSM and iterative fooling images
    occlusion.py     occlusion maps
    optimise.py      the image-optimisation loop (jitter, blur, octaves, Adam) and its regularisers
    objectives.py    what classviz, invert, dream and style minimise
    features.py      filters, activations, nearest neighbours, 2-D embeddings
    images.py        PNG grids, scatter plots, .npy and JSON output
"""
