"""fcn_dist: distributed training service for FCN-32s/16s/8s semantic segmentation."""

__version__ = "0.1.0"

