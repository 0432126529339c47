"""Adapter kinds (``lora``, ``brick``; see :mod:`.base` for the interface and registry) and their tensors under
canonical names (:mod:`.naming`). No Flower imports."""
