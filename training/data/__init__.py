"""YOLO-format data: scanning, caching, augmentation and batching."""
