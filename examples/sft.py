"""Tülu 3 SFT: ``python examples/sft.py [hydra overrides]`` (``hydra_entry.py`` says more)."""

if __name__ == "__main__":
    from hydra_entry import run  # examples/ is the script's directory, first on sys.path

    run("sft")
