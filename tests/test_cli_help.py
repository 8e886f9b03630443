"""What --help and --version tell a newcomer: the named --config values and --set images= choices of
`retrieval extract` (the CLI's copies checked against the registries), a complete training help,
the version."""
import subprocess
import sys
import typing
from pathlib import Path

from retrieval import __version__
from retrieval.cli import main
from retrieval.cli.names import (EFFICIENTNET_CONFIG_NAMES, EXTRACT_IMAGES, HESAFF_CONFIG_NAMES, LEARNED_CONFIG_NAMES,
                                  SIFT_CONFIG_NAMES)

ROOT = Path(__file__).resolve().parent.parent


def test_cli_names_are_the_registries():
    from retrieval.features.efficientnet_configs import EXTRACTOR_CONFIGS
    from retrieval.features.hesaff import HESAFF_CONFIGS
    from retrieval.features.learned import LEARNED_CONFIGS
    from retrieval.features.sift import SIFT_CONFIGS
    from retrieval.steps.extract import ExtractConfig

    assert tuple(SIFT_CONFIGS.names()) == SIFT_CONFIG_NAMES
    assert tuple(HESAFF_CONFIGS.names()) == HESAFF_CONFIG_NAMES
    assert tuple(LEARNED_CONFIGS.names()) == LEARNED_CONFIG_NAMES
    assert tuple(EXTRACTOR_CONFIGS.names()) == EFFICIENTNET_CONFIG_NAMES
    assert typing.get_args(typing.get_type_hints(ExtractConfig)["images"]) == EXTRACT_IMAGES


def test_extract_help_lists_configs_and_image_choices(capsys):
    assert main(["extract", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("rootsift-2k", "rootsift-upright-c02-4k", "hesaff-rootsift-upright-4k", "xfeat-4k", "disk-2k",
                 "lite0-gem-512", "lite0-blocks-gem-ms-512", "lite0-coil-128"):
        assert name in text.replace("- ", "-")   # argparse may wrap a name at its hyphen
    assert "images=db|queries|all" in text


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"retrieval (hybrid-retrieval) {__version__}"
    assert "version = attr: retrieval.__version__" in (ROOT / "setup.cfg").read_text()


def test_training_help_is_complete():
    out = subprocess.run([sys.executable, "-m", "retrieval.cli", "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "also a command group\n" not in out and not out.rstrip().endswith("group")
    assert "retrieval train siamese --config coil-e4 --init runs/e2" in out
    assert out.rstrip().endswith("the training time.")
