"""tinker-cookbook's supervised trainer (tinker_cookbook.supervised.train, unmodified) against a Tinker
server, with the cookbook's own example conversations and a local model directory.

Its module entry point cannot be started from the command line in cookbook 0.5.8 (chz rejects the
lambda it wraps), so this file builds the same Config the recipe's own sl_basic builds, with local
data in place of a dataset from the hub, and calls the recipe's main.

    python supervised.py MODEL_DIR LOG_DIR [STEPS]    # TINKER_BASE_URL, TINKER_API_KEY set
"""
import asyncio
import os
import sys
from pathlib import Path

import tinker_cookbook
from tinker_cookbook.renderers import TrainOnWhat
from tinker_cookbook.supervised import train
from tinker_cookbook.supervised.data import FromConversationFileBuilder
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

model, log_path = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
common = ChatDatasetBuilderCommonConfig(model_name_for_tokenizer=model, renderer_name="role_colon", max_length=256,
                                        batch_size=4, train_on_what=TrainOnWhat.ALL_ASSISTANT_MESSAGES)
data = Path(tinker_cookbook.__file__).parent / "example_data" / "conversations.jsonl"
config = train.Config(log_path=log_path, model_name=model, recipe_name="strop_local_sl", renderer_name="role_colon",
                      dataset_builder=FromConversationFileBuilder(common_config=common, file_path=str(data)),
                      learning_rate=2e-4, lr_schedule="constant", lora_rank=8, base_url=os.environ["TINKER_BASE_URL"],
                      save_every=0, eval_every=0, ttl_seconds=None, max_steps=steps)
asyncio.run(train.main(config))
