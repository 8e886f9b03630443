"""Dataset readers and writers: every reader returns a :class:`RetrievalDataset`.

Oxford/Paris (standard and revisited ground truth), labelled flat folders (COIL-100/COIL-20),
multi-view layouts, GLDv2 (Kaggle format, read and export), and query/database splits.
"""
from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import IMAGE_EXTENSIONS, DatasetError, DatasetWarning, check_images, list_images, natural_key
from retrieval.datasets.folders import group_views, read_labelled_folder, read_multiview_tree, read_os_core
from retrieval.datasets.gldv2 import (coil100_gldv2_split, export_gldv2, gldv2_id, gldv2_image_path,
                    labelled_gldv2_split, read_gldv2)
from retrieval.datasets.oxford import crop_query, read_gt_queries, read_oxford, read_revisited, revisited_truth
from retrieval.datasets.splits import canonical_order, drop_junk, every_nth_query, exclude_self

__all__ = [
    "QueryTruth", "RetrievalDataset", "DatasetError", "DatasetWarning", "IMAGE_EXTENSIONS", "check_images",
    "list_images",
    "natural_key", "read_labelled_folder", "read_multiview_tree", "read_os_core", "group_views",
    "read_oxford", "read_revisited", "read_gt_queries", "crop_query", "revisited_truth",
    "every_nth_query", "canonical_order", "exclude_self", "drop_junk", "read_gldv2", "export_gldv2", "gldv2_id",
    "gldv2_image_path", "labelled_gldv2_split", "coil100_gldv2_split",
]
