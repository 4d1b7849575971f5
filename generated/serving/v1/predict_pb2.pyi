from google.api import annotations_pb2 as _annotations_pb2
from serving.v1 import model_pb2 as _model_pb2
from serving.v1 import task_pb2 as _task_pb2
from serving.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_ENCODING_UNSPECIFIED: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_RAW: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_TYPED: _ClassVar[TensorEncoding]
TENSOR_ENCODING_UNSPECIFIED: TensorEncoding
TENSOR_ENCODING_RAW: TensorEncoding
TENSOR_ENCODING_TYPED: TensorEncoding

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "inputs", "output_filter", "top_k", "request_id", "output_encoding", "record_task", "inline_files", "version_label")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Input
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Input, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILTER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    RECORD_TASK_FIELD_NUMBER: _ClassVar[int]
    INLINE_FILES_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    inputs: _containers.MessageMap[str, _tensor_pb2.Input]
    output_filter: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    request_id: str
    output_encoding: TensorEncoding
    record_task: bool
    inline_files: bool
    version_label: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., inputs: _Optional[_Mapping[str, _tensor_pb2.Input]] = ..., output_filter: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., request_id: _Optional[str] = ..., output_encoding: _Optional[_Union[TensorEncoding, str]] = ..., record_task: _Optional[bool] = ..., inline_files: _Optional[bool] = ..., version_label: _Optional[str] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("label", "index", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    score: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassScore]
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ...) -> None: ...

class FileRef(_message.Message):
    __slots__ = ("uri", "url", "presigned_url", "content_type", "size", "sha256", "key")
    URI_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PRESIGNED_URL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    uri: str
    url: str
    presigned_url: str
    content_type: str
    size: int
    sha256: str
    key: str
    def __init__(self, uri: _Optional[str] = ..., url: _Optional[str] = ..., presigned_url: _Optional[str] = ..., content_type: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class FileList(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileRef]
    def __init__(self, files: _Optional[_Iterable[_Union[FileRef, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "model", "outputs", "classifications", "files", "task_id")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FileList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FileList, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _model_pb2.ModelRef
    outputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    files: _containers.MessageMap[str, FileList]
    task_id: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ..., outputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., files: _Optional[_Mapping[str, FileList]] = ..., task_id: _Optional[str] = ...) -> None: ...

class PredictAsyncRequest(_message.Message):
    __slots__ = ("request", "webhook_url", "retry", "max_time_in_queue_seconds", "metadata", "task_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_IN_QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    request: PredictRequest
    webhook_url: str
    retry: _task_pb2.RetryPolicy
    max_time_in_queue_seconds: int
    metadata: _containers.ScalarMap[str, str]
    task_id: str
    def __init__(self, request: _Optional[_Union[PredictRequest, _Mapping]] = ..., webhook_url: _Optional[str] = ..., retry: _Optional[_Union[_task_pb2.RetryPolicy, _Mapping]] = ..., max_time_in_queue_seconds: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., task_id: _Optional[str] = ...) -> None: ...

class PredictAsyncResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version", "version_label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    version_label: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., version_label: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelMetadata
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelMetadata, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_model_pb2.ModelMetadata]
    def __init__(self, models: _Optional[_Iterable[_Union[_model_pb2.ModelMetadata, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_model_pb2.ModelMetadata]
    def __init__(self, models: _Optional[_Iterable[_Union[_model_pb2.ModelMetadata, _Mapping]]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded_versions",)
    UNLOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    unloaded_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, unloaded_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class GetModelStatisticsRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelStatisticsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_model_pb2.ModelStatistics]
    def __init__(self, models: _Optional[_Iterable[_Union[_model_pb2.ModelStatistics, _Mapping]]] = ...) -> None: ...
