"""plain-lora: a minimal Flower / Hugging Face / PEFT app (the peer of a fedbrick-flower scenario)."""
