from .pointclouds import InstanceCrop, crop_instances, sample_points, sampling_probability, subsample

__all__ = ["InstanceCrop", "crop_instances", "sample_points", "sampling_probability", "subsample"]
