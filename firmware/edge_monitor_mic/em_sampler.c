/*
 * em_sampler.c - Timer1-triggered ADC sampling for the ATmega328P.
 */
#include "em_sampler.h"

#include <avr/interrupt.h>
#include <avr/io.h>
#include <stddef.h>
#include <util/atomic.h>

static volatile uint16_t s_blocks[EM_BLOCK_COUNT][EM_BLOCK_SAMPLES];
static volatile uint16_t s_block_seq[EM_BLOCK_COUNT];
static volatile uint8_t s_write_block; /* block the ADC interrupt fills */
static volatile uint8_t s_read_block;  /* oldest completed block */
static volatile uint8_t s_filled;      /* completed blocks not yet released */
static volatile uint8_t s_fill_index;  /* next sample slot in the write block */
static volatile uint16_t s_seq;        /* sequence number of the block being filled */
static volatile uint8_t s_overrun;     /* blocks were dropped since the last peek */

/* The compare-match-B flag must be cleared for the next auto trigger; entering this
 * (empty) interrupt clears it in hardware. */
EMPTY_INTERRUPT(TIMER1_COMPB_vect);

ISR(ADC_vect)
{
    uint8_t w = s_write_block;
    uint8_t i = s_fill_index;
    s_blocks[w][i] = ADC;
    if (++i < EM_BLOCK_SAMPLES) {
        s_fill_index = i;
        return;
    }
    s_fill_index = 0;
    if (s_filled < EM_BLOCK_COUNT - 1u) {
        /* keep one block free for filling while the others wait */
        s_block_seq[w] = s_seq;
        s_write_block = (uint8_t)((w + 1u) % EM_BLOCK_COUNT);
        s_filled++;
    } else {
        s_overrun = 1; /* refill the same block: this one is lost */
    }
    s_seq++;
}

void em_sampler_stop(void)
{
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        TCCR1B = 0;
        TIMSK1 = 0;
        ADCSRA = 0;
        s_filled = 0;
        s_read_block = 0;
        s_write_block = 0;
        s_fill_index = 0;
        s_seq = 0;
        s_overrun = 0;
    }
}

void em_sampler_start(uint16_t sample_rate_hz)
{
    uint16_t top = (uint16_t)(F_CPU / sample_rate_hz - 1u); /* 999 at 16 kHz, 1999 at 8 kHz */
    em_sampler_stop();
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        DIDR0 = _BV(ADC0D);                               /* A0 is analog only */
        ADMUX = _BV(REFS0);                               /* AVCC reference, right-adjusted, ADC0 */
        ADCSRB = _BV(ADTS2) | _BV(ADTS0);                 /* trigger: Timer1 compare match B */
        ADCSRA = _BV(ADEN) | _BV(ADATE) | _BV(ADIE) | _BV(ADIF) |
                 _BV(ADPS2) | _BV(ADPS0);                 /* 16 MHz / 32 = 500 kHz ADC clock */
        TCCR1A = 0;
        TCNT1 = 0;
        OCR1A = top;
        OCR1B = top;
        TIFR1 = _BV(OCF1B) | _BV(OCF1A);
        TIMSK1 = _BV(OCIE1B);
        TCCR1B = _BV(WGM12) | _BV(CS10);                  /* CTC on OCR1A, no prescaler */
    }
}

const volatile uint16_t *em_sampler_peek(uint16_t *seq, uint8_t *overrun)
{
    const volatile uint16_t *block = NULL;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        if (s_filled > 0) {
            block = s_blocks[s_read_block];
            *seq = s_block_seq[s_read_block];
            *overrun = s_overrun;
            s_overrun = 0;
        }
    }
    return block;
}

void em_sampler_release(void)
{
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        if (s_filled > 0) {
            s_read_block = (uint8_t)((s_read_block + 1u) % EM_BLOCK_COUNT);
            s_filled--;
        }
    }
}
