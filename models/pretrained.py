"""Where the teacher's pretrained parts come from by default (one place for the ids; importing this module
costs nothing): the Stable Diffusion v1.5 weights and the CLIP text model that embeds the prompts."""

# The weights of `runwayml/stable-diffusion-v1-5`, which is gone from the Hub, live on under this id.
STABLE_DIFFUSION = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_TEXT = "openai/clip-vit-large-patch14"
