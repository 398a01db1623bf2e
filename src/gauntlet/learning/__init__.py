"""Learning systems an attacker takes part in rather than a dataset it edits: federated learning
on Flower (``federated``), asynchronous SGD workers sharing parameters (``async_sgd``), an online
spam filter with a seeded synthetic mail generator (``spam``) and a matrix-factorisation
recommender on seeded synthetic ratings (``recommender``).  The attacks on them are registered
in :mod:`gauntlet.attacks.poisoning`, the defenses in :mod:`gauntlet.defenses.federated` and
:mod:`gauntlet.defenses.online`.  Modules are imported on use (Flower is an optional extra)."""
