"""The built-in rules' specs (torch-free): name, implementation, the settings each reads and its reference values
(REFERENCE.md section 6). One entry per rule file in ``sim/rules/``; plugins add theirs through the ``gaitsim.rules``
entry points instead (:mod:`sim.rules.registry`, docs/rules.md).
"""

from __future__ import annotations

from sim.rules.registry import COMMON, RuleSpec

#: the GP rules read the inverse's settings besides the common ones
_GP = (*COMMON, "arithmetic", "inverse")
#: FA's CIFAR-10 reference optimiser (REFERENCE.md section 6), shared by the fixed-feedback rules
_FA_ADAM = {"lr": 2.5e-5, "betas": (0.9, 0.99), "eps": 1e-4}
#: Kolen-Pollack's decay. Both W and B get the same Adam step, so B - W shrinks by exactly (1 - lr decay) per step and
#: only the decay makes B converge to W (with 0, B - W keeps its initial value; Akrout et al. 2019 sec. 3: "weight
#: decay on both"). What matters is the total shrink exp(-lr decay steps): the reference run (200 epochs of 196
#: steps at lr 2.5e-5, lr * steps ~ 0.98) gets exp(-4.9), i.e. B - W falls to <1% of its start, while W's own decay
#: per step (1.25e-4) stays far below its updates. Much more hurts W (digits, lr 1e-3: decay 5 keeps 0.88 test
#: accuracy, decay 50 decays the net to chance); a short run (a few epochs) shrinks B - W by only a few percent.
_KP_DECAY = 5.0

BUILTIN: tuple[RuleSpec, ...] = (
    RuleSpec("bp", "sim.rules.bp:Backprop", "backprop, e_{l-1} = W^T (D e).",
             defaults={"lr": 1.9e-5, "betas": (0.9, 0.999), "eps": 1e-6, "ortho_lambda": 0.0}),
    RuleSpec("fa", "sim.rules.fa:FeedbackAlignment", "feedback alignment, e_{l-1} = B^T (D e), B fixed random "
             "(Lillicrap et al. 2016).", defaults={**_FA_ADAM, "ortho_lambda": 0.0}),
    RuleSpec("vgp", "sim.rules.vgp:VanillaGP", "vanilla GAIT-prop, a constant gamma (Ahmad et al. 2020).",
             settings=(*_GP, "gamma"), defaults={"lr": 1.9e-5, "betas": (0.9, 0.999), "eps": 1e-6,
                                                 "ortho_lambda": 100.0, "gamma": 1e-3}),
    RuleSpec("gp", "sim.rules.gp:NormalizedGP", "normalized GAIT-prop (Dalm et al. 2023).",
             settings=(*_GP, "eta"), defaults={"lr": 1.9e-5, "betas": (0.9, 0.999), "eps": 1e-6,
                                               "ortho_lambda": 100.0, "eta": 1e-7}),
    RuleSpec("dfa", "sim.rules.dfa:DirectFeedbackAlignment", "direct feedback alignment: the output error through "
             "a fixed random B_l [n_l, n_out] (Nokland 2016).", defaults=dict(_FA_ADAM)),
    RuleSpec("usf", "sim.rules.usf:UniformSignFeedback", "uniform sign-concordant feedback, B = sign(W) scaled "
             "(Liao et al. 2016, as BioTorch).", defaults=dict(_FA_ADAM)),
    RuleSpec("brsf", "sim.rules.brsf:BatchRandomSignFeedback", "sign-concordant feedback with random magnitudes "
             "redrawn every batch, B = |M| sign(W) (Liao et al. 2016, as BioTorch).", defaults=dict(_FA_ADAM)),
    RuleSpec("frsf", "sim.rules.frsf:FixedRandomSignFeedback", "sign-concordant feedback with fixed random "
             "magnitudes, B = |M| sign(W) (Liao et al. 2016, as BioTorch).", defaults=dict(_FA_ADAM)),
    RuleSpec("kp", "sim.rules.kp:KolenPollack", "Kolen-Pollack: a learned feedback B with W's update and decay "
             "on both, so B -> W (Akrout et al. 2019).", settings=(*COMMON, "decay"),
             defaults={**_FA_ADAM, "decay": _KP_DECAY}),
    # dtp's feedback_lr: g must track W as W moves, with one reconstruction step per forward step (Meulemans et al.
    # 2020's code trains g for extra epochs ahead of W, scalingDTP for several iterations per batch), so its rate
    # must lie well above the forward one; 1e-3 with Adam (measured on digits_deep at lr 1e-3: feedback_lr 1e-4
    # reaches 0.26-0.37 test in 14 epochs, 1e-3 0.72-0.80, 1e-2 oscillates at 0.1-0.5; docs/rules.md).
    RuleSpec("dtp", "sim.rules.dtp:DifferenceTargetProp", "difference target propagation: a learned feedback "
             "g(h) = s_{l-1}(V h + c) (s_{l-1}: the receiving layer's activation) trained on a noisy "
             "reconstruction loss, d_{l-1} = g(a + d) - g(a) (Lee et al. 2015; 'drl': Meulemans et al. 2020).",
             settings=(*COMMON, "feedback_lr", "reconstruction_std", "reconstruction"),
             defaults={"lr": 1.9e-5, "betas": (0.9, 0.999), "eps": 1e-6, "ortho_lambda": 0.0, "feedback_lr": 1e-3,
                       "reconstruction_std": 0.1, "reconstruction": "dtp"}),
    RuleSpec("lgp", "sim.rules.lgp:LearnedInverseGP", "normalized GAIT-prop whose exact inverse is a learned V -> "
             "W^-1 trained on a local difference reconstruction loss (Dalm et al. 2023's proposed next step).",
             settings=(*COMMON, "eta", "feedback_lr", "reconstruction_std"),
             defaults={"lr": 1.9e-5, "betas": (0.9, 0.999), "eps": 1e-6, "ortho_lambda": 100.0, "eta": 1e-7,
                       "feedback_lr": 1e-4, "reconstruction_std": 0.1}),
)
