"""The training core (PyTorch): frozen CLIP, the P domain prompts, the TKI losses and the hyperbolic head.

- :mod:`.clip`: ``load_clip`` (open_clip model configs, pretrained or random weights);
- :mod:`.prompts`: ``PromptBank`` (the P learned domain word vectors, ``a [DOMAIN]_p style of [CLASS]``);
- :mod:`.losses`: L_min, L_max, L_exp = L_min + λ·L_max (stage 1) and L_agg (stage 2);
- :mod:`.hyperbolic`: the Poincaré-ball maps (expmap0, logmap0, Möbius operations, dist0);
- :mod:`.head`: ``HyperbolicMLP`` (the head h, Poincaré or Euclidean);
- :mod:`.labels`: label words for stage 1;  :mod:`.trainer`: ``TrainConfig`` and ``train``;
- :mod:`.model`: ``TKIModel`` (CLIP + head);  :mod:`.checkpoint`: save / load (``config.json`` + safetensors).

Nothing here imports the runtime, export, the service, the benchmarks or the CLI.
"""
