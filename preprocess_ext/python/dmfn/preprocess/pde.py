"""PLACEHOLDER (being implemented): fourth-order PDE denoising."""


def denoise_pde(*args, **kwargs):
    raise NotImplementedError


def pde_stability_bound(mode: str = "3d") -> float:
    raise NotImplementedError
