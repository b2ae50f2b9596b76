"""One builder per modality, each returning a resumable ``BatchSource`` (``stateful.ResumableLoader``).

build_text_reader        text shards -> packed token rows (input_ids, labels, cu_seqlens)
build_image_text_reader  image + caption shards -> images [B, 3, H, W] + captions
build_vqa_reader         image + question/answers shards -> images + QA
build_video_reader       audible video shards -> frames [B, T, 3, H, W] + audio [B, S] (+ log-mel)
"""
