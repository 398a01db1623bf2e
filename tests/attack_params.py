"""Fast, small hyperparameters per registered attack for the contract suite.

Every registered attack must have an entry here (a test enforces it), so no attack can dodge
the contract suite.  ``eps`` is added by the tests.
"""

import torch

import gauntlet as gt
from gauntlet.models.zoo import DigitsCNN


def _untrained_surrogate() -> gt.models.TorchModel:
    """The transfer attack's white-box stand-in: a seeded, untrained digits CNN (the contract
    checks invariants, not transfer strength)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DigitsCNN().eval()
    return gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))


FAST_PARAMS: dict[str, dict] = {
    "transfer": {"surrogate": _untrained_surrogate(), "steps": 3},
    "fgsm": {},
    "bim": {"steps": 5},
    "pgd": {"steps": 5},
    "mifgsm": {"steps": 5},
    "apgd_ce": {"steps": 10},
    "apgd_dlr": {"steps": 10},
    "apgd_t": {"steps": 5, "n_target_classes": 2},
    "cw_l2": {"steps": 20, "binary_search_steps": 3, "final_steps": 10},
    "deepfool": {"steps": 20},
    "fab": {"steps": 10, "n_target_classes": 2},
    "square": {"max_queries": 50},
    "hopskipjump": {"max_queries": 60},
    "boundary": {"max_queries": 60},
    "nes": {"max_queries": 50, "samples": 10},
    "spsa": {"max_queries": 50, "samples": 10},
    "zoo": {"max_queries": 50, "coordinates": 8},
    "one_pixel": {"pixels": 2, "max_queries": 50, "popsize": 10},
    "genattack": {"max_queries": 50},
    "universal_perturbation": {"steps": 2, "restarts": 2, "minibatch": 4},
    "patch": {"scale": 0.25, "targeted": False, "steps": 5, "minibatch": 4},
    "sticker": {"steps": 5, "eot_samples": 2},
    "autoattack": {"steps": 5, "n_target_classes": 2, "square_queries": 50},
}

# norms each attack supports in the contract suite (first is the default)
NORMS: dict[str, tuple[str, ...]] = {
    "transfer": ("linf", "l2"),
    "fgsm": ("linf", "l2", "l1"),
    "bim": ("linf", "l2", "l1"),
    "pgd": ("linf", "l2", "l1"),
    "mifgsm": ("linf", "l2"),
    "apgd_ce": ("linf", "l2"),
    "apgd_dlr": ("linf", "l2"),
    "apgd_t": ("linf", "l2"),
    "cw_l2": ("l2",),
    "deepfool": ("l2", "linf"),
    "fab": ("linf", "l2"),
    "square": ("linf", "l2"),
    "hopskipjump": ("l2", "linf"),
    "boundary": ("l2",),
    "nes": ("linf", "l2"),
    "spsa": ("linf",),
    "zoo": ("linf", "l2"),
    "one_pixel": ("l0",),
    "genattack": ("linf",),
    "universal_perturbation": ("linf", "l2"),
    "patch": ("l0",),
    "sticker": ("l0",),
    "autoattack": ("linf", "l2"),
}

# sparse attacks take no eps: the most pixels (L0, channels counted once) their contract
# parameters may change on an 8x8 digit
PIXEL_BUDGET: dict[str, int] = {
    "one_pixel": 2,
    "patch": 16,  # floor(0.25 * 8 * 8)
    "sticker": 12,  # the "bars" mask on 8x8: two bars of 1 x 6 pixels
}


def required_params(name: str) -> dict:
    """The contract values of ``name``'s parameters that have no default (the transfer attack's
    surrogate), for tests that build every attack from its defaults."""
    import inspect

    cls = gt.attacks.get_attack_class(name)
    sig = inspect.signature(cls.__init__).parameters
    return {k: FAST_PARAMS[name][k] for k in cls._param_names() if sig[k].default is inspect.Parameter.empty}


def budget_params(name: str, eps: float = 0.1) -> dict:
    """``eps`` for the attacks that take one (sparse attacks bound pixels instead), plus the
    required parameters."""
    cls = gt.attacks.get_attack_class(name)
    out = required_params(name)
    if "eps" in cls._param_names() and not getattr(cls, "minimal", False):  # poisoning attacks have no minimal flag
        out["eps"] = eps
    return out
