"""Generation (textbook 4.4, the fourth core task): VAE, VQ-VAE, MAE, GAN / WGAN-GP,
pix2pix and denoising diffusion (DDPM / DDIM, conditional, latent, classifier-free
guidance), and the book's medical uses -- inpainting / defect repair, unsupervised
anomaly detection, super-resolution and 2-D projection -> 3-D volume through discrete
codes, and the stain / un-stain cycle operator of AQuA (:func:`cycle_frames`).  The
networks and losses are :mod:`biomip.nn`; every model here is a class with
``fit``, ``sample`` (or ``__call__``), ``save`` / ``load`` (safetensors + JSON).

Submodules load on first use.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
