r"""``python -m condgen``: the ``condgen`` command line (:mod:`condgen.cli`), which is also
what ``torchrun --nproc_per_node=K -m condgen train ...`` runs in every process."""

from condgen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
