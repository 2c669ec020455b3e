"""OPT-Tri: tri-modal (text + image + audio) pre-training for Hugging Face Transformers.

Importing the package registers OPT-Tri with the `transformers` Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForPreTraining`, `AutoModelForSequenceClassification`, `AutoModelForVisualQuestionAnswering`,
`AutoModelForImageTextToText` (captioning/ASR), `AutoModelForMultimodalLM` (text-to-image),
`AutoModelForTextToWaveform` (text-to-audio), `AutoImageProcessor`, `AutoFeatureExtractor`, `AutoProcessor`), so installed users load
checkpoints without `trust_remote_code`. Checkpoints also carry the Hub files for users who never installed us.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining, AutoProcessor
from transformers import AutoModelForImageTextToText, AutoModelForSequenceClassification, AutoModelForVisualQuestionAnswering
from transformers import AutoModelForMultimodalLM, AutoModelForTextToWaveform
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # the real class even without torchvision

from .configuration_opt_tri import (
    PRETRAINING_OBJECTIVES,
    OptTriAudioConfig,
    OptTriCodeDecoderConfig,
    OptTriConfig,
    OptTriFusionConfig,
    OptTriTextDecoderConfig,
)
from .configuration_opt_tri_vq import OptTriAudioVQConfig, OptTriImageVQConfig
from .feature_extraction_opt_tri import OptTriFeatureExtractor
from .image_processing_opt_tri import OptTriImageProcessor
from .modeling_opt_tri import (
    OptTriAudioModel,
    OptTriCodeDecoderOutput,
    OptTriCodeGenerationOutput,
    OptTriForConditionalGeneration,
    OptTriForPairReasoning,
    OptTriForPreTraining,
    OptTriForPreTrainingOutput,
    OptTriForQuestionAnswering,
    OptTriForRetrieval,
    OptTriForSequenceClassification,
    OptTriForTextToAudio,
    OptTriForTextToImage,
    OptTriModel,
    OptTriModelOutput,
    OptTriPreTrainedModel,
)
from .modeling_opt_tri_vq import OptTriAudioVQModel, OptTriImageVQModel
from .processing_opt_tri import OptTriProcessor

__version__ = "0.1.0"

AutoConfig.register(OptTriConfig.model_type, OptTriConfig, exist_ok=True)
AutoConfig.register(OptTriAudioConfig.model_type, OptTriAudioConfig, exist_ok=True)
AutoModel.register(OptTriConfig, OptTriModel, exist_ok=True)
AutoModel.register(OptTriAudioConfig, OptTriAudioModel, exist_ok=True)
AutoModelForPreTraining.register(OptTriConfig, OptTriForPreTraining, exist_ok=True)
AutoModelForSequenceClassification.register(OptTriConfig, OptTriForSequenceClassification, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(OptTriConfig, OptTriForQuestionAnswering, exist_ok=True)
AutoModelForImageTextToText.register(OptTriConfig, OptTriForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(OptTriConfig, OptTriForTextToImage, exist_ok=True)
AutoModelForTextToWaveform.register(OptTriConfig, OptTriForTextToAudio, exist_ok=True)
AutoConfig.register(OptTriCodeDecoderConfig.model_type, OptTriCodeDecoderConfig, exist_ok=True)
AutoConfig.register(OptTriImageVQConfig.model_type, OptTriImageVQConfig, exist_ok=True)
AutoConfig.register(OptTriAudioVQConfig.model_type, OptTriAudioVQConfig, exist_ok=True)
AutoModel.register(OptTriImageVQConfig, OptTriImageVQModel, exist_ok=True)
AutoModel.register(OptTriAudioVQConfig, OptTriAudioVQModel, exist_ok=True)
AutoImageProcessor.register(OptTriConfig, slow_image_processor_class=OptTriImageProcessor, exist_ok=True)
AutoFeatureExtractor.register(OptTriConfig, OptTriFeatureExtractor, exist_ok=True)
AutoProcessor.register(OptTriConfig, OptTriProcessor, exist_ok=True)

__all__ = [
    "PRETRAINING_OBJECTIVES",
    "OptTriAudioConfig",
    "OptTriAudioModel",
    "OptTriAudioVQConfig",
    "OptTriAudioVQModel",
    "OptTriCodeDecoderConfig",
    "OptTriCodeDecoderOutput",
    "OptTriCodeGenerationOutput",
    "OptTriConfig",
    "OptTriFeatureExtractor",
    "OptTriForConditionalGeneration",
    "OptTriForPairReasoning",
    "OptTriForPreTraining",
    "OptTriForPreTrainingOutput",
    "OptTriForQuestionAnswering",
    "OptTriForRetrieval",
    "OptTriForSequenceClassification",
    "OptTriForTextToAudio",
    "OptTriForTextToImage",
    "OptTriFusionConfig",
    "OptTriImageProcessor",
    "OptTriImageVQConfig",
    "OptTriImageVQModel",
    "OptTriModel",
    "OptTriModelOutput",
    "OptTriPreTrainedModel",
    "OptTriProcessor",
    "OptTriTextDecoderConfig",
]
