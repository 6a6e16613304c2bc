from base.base_data_loader import BaseDataLoader, refuse_set_args
from base.base_model import BaseModel
from base.base_stream_loader import BaseStreamLoader
from base.base_trainer import BaseTrainer

__all__ = ["BaseDataLoader", "BaseModel", "BaseStreamLoader", "BaseTrainer", "refuse_set_args"]
