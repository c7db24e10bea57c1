"""The dataset folders of the original: photos in trainA / testA, cartoons in trainB / testB."""

PHOTO_SPLITS = ("trainA", "testA")
CARTOON_SPLITS = ("trainB", "testB")
SPLITS = ("trainA", "trainB", "testA", "testB")
