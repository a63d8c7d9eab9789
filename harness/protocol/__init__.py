"""The evaluation protocol: models, the one training loop, attacks and AutoAttack, the
gradient-masking checks, a trial run and scored (`evaluate`), and its saved progress
(`checkpoint`). Every method is scored here, never by itself."""
