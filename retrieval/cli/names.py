"""Named values the command lines list in ``--help``, repeated here so that ``--help`` imports neither
numpy, OpenCV nor torch; ``tests/test_cli_help.py`` checks each list against its registry."""
from __future__ import annotations

__all__ = ["SIFT_CONFIG_NAMES", "HESAFF_CONFIG_NAMES", "LEARNED_CONFIG_NAMES", "EFFICIENTNET_CONFIG_NAMES",
           "EXTRACT_IMAGES", "config_help"]

# retrieval.features.sift.SIFT_CONFIGS
SIFT_CONFIG_NAMES = ("sift-1k", "sift-2k", "rootsift-1k", "rootsift-2k", "rootsift-4k", "rootsift-c02-4k",
                     "rootsift-upright-c02-4k", "rootsift-upright-c01-8k", "rootsift-upright-4k", "rootsift-small",
                     "rootsift-small-upright")
# retrieval.features.hesaff.HESAFF_CONFIGS
HESAFF_CONFIG_NAMES = ("hesaff-rootsift-upright-4k", "hesaff-rootsift-upright-2k", "hesaff-rootsift-4k")
# retrieval.features.learned.LEARNED_CONFIGS
LEARNED_CONFIG_NAMES = ("xfeat-512", "xfeat-1k", "xfeat-2k", "xfeat-4k", "disk-1k", "disk-2k", "disk-4k")
# retrieval.features.efficientnet_configs.EXTRACTOR_CONFIGS
EFFICIENTNET_CONFIG_NAMES = ("lite0-gem-512", "lite0-gem-ms-512", "lite0-gem-ms2-512", "lite0-avg-512",
                             "lite0-avg-ms-512", "lite0-max-512", "lite0-max-ms-512", "lite0-blocks-gem-512",
                             "lite0-blocks-gem-ms-512", "lite0-gem-224", "lite0-avg-224", "lite0-max-224",
                             "lite0-coil-128", "lite0-patch-224")
# retrieval.steps.extract.ExtractConfig.images
EXTRACT_IMAGES = ("db", "queries", "all")


def config_help() -> str:
    return (f"named extractor configuration; local (SIFT family): {', '.join(SIFT_CONFIG_NAMES)}; local "
            f"(Hessian-affine RootSIFT): {', '.join(HESAFF_CONFIG_NAMES)}; local (learned): "
            f"{', '.join(LEARNED_CONFIG_NAMES)}; global and patches (EfficientNet): "
            f"{', '.join(EFFICIENTNET_CONFIG_NAMES)}")
