#!/bin/sh
# In the guest: the pipeline section, the code before the split (bfe758e) and after, alternating.
cd /var/tmp/ab
for i in 1 2 3 4; do
  echo "=== OLD $i"; /var/tmp/ab/oldvenv/bin/python /var/tmp/orig/benchmarks/guest/throughput.py --out /var/tmp/ab/old$i.json --skip moves,idle --pipeline-reps 2 --backlog-mib 0
  echo "=== NEW $i"; /var/tmp/ab/newvenv/bin/python /work/main/benchmarks/guest/throughput.py --out /var/tmp/ab/new$i.json --skip moves,idle --pipeline-reps 2 --backlog-mib 0
done
