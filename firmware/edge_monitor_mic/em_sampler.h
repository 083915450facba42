/*
 * em_sampler.h - timer-triggered ADC sampling into a ring of blocks (ATmega328P).
 *
 * Timer1 runs in CTC mode at the sample rate; its compare-match-B event
 * auto-triggers one ADC conversion of A0, so the sampling instants have no
 * software jitter. The ADC interrupt stores each 10-bit result into the
 * current block. Completed blocks wait in a ring of EM_BLOCK_COUNT until the
 * main loop has sent them; if the ring is full the newest block is dropped,
 * its sequence number is skipped and an overrun is reported.
 */
#ifndef EM_SAMPLER_H
#define EM_SAMPLER_H

#include <stdint.h>

#define EM_BLOCK_SAMPLES 128u /* 8 ms at 16 kHz: one frame */
#define EM_BLOCK_COUNT 4u     /* 32 ms of buffering at 16 kHz */

#ifdef __cplusplus
extern "C" {
#endif

/** Start sampling A0 at sample_rate_hz (8000 or 16000); the block sequence restarts at 0. */
void em_sampler_start(uint16_t sample_rate_hz);

/** Stop the timer and the ADC and drop all pending blocks. */
void em_sampler_stop(void);

/**
 * The oldest completed block, or NULL if none. *seq gets its sequence number,
 * *overrun is set if blocks were dropped since the previous one was taken.
 * The block stays valid until em_sampler_release().
 */
const volatile uint16_t *em_sampler_peek(uint16_t *seq, uint8_t *overrun);

/** Give the block returned by em_sampler_peek() back to the sampler. */
void em_sampler_release(void);

#ifdef __cplusplus
}
#endif

#endif /* EM_SAMPLER_H */
