"""Model references: built-in offline packs, local folders, GGUF files and hub ids."""
