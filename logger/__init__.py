from logger.logger import add_log_file, close_log_files, get_logger, setup_logging
from logger.metrics_file import MetricsFile
from logger.tensorboard import TensorboardWriter

__all__ = ["MetricsFile", "TensorboardWriter", "add_log_file", "close_log_files", "get_logger", "setup_logging"]
